"""The OMF backend's settings ([sfa_frcp]) as the configuration reads and checks them."""

from __future__ import annotations

from pathlib import Path

from sfa_omf.config import load_config
from tests.test_config import minimal


def test_frcp_settings_are_read_and_an_amqp_url_is_checked(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "[sfa_aggregate]",
        "type = omf",
        "[sfa_frcp]",
        "amqp_url = amqps://uf:secret@broker.example.org:5671/omf",
        "user_factory = uf",
        "timeout_s = 12",
        "account = broker",
    )
    loaded = load_config(path, environ={})
    assert loaded.problems == ()
    settings = loaded.settings
    assert (settings.frcp_user_factory, settings.frcp_timeout_s, settings.frcp_account) == ("uf", 12, "broker")
    assert "secret" not in repr(settings)

    path = minimal(tmp_path, "[sfa_aggregate]", "type = omf", "[sfa_frcp]", "amqp_url = http://uf:secret@broker/")
    (problem,) = load_config(path, environ={}).problems
    assert problem.kind == "invalid"
    assert str(problem) == (
        f"{path}:7: [sfa_frcp] amqp_url 'http://uf:***@broker/' is not an AMQP URL "
        "(amqp://user:password@host:5672/vhost, or amqps:// for TLS)"
    )
