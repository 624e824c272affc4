"""``serve`` loads its trusted roots, waits (the cluster's start-up lock, the authority's import), then watches the
directory: the watch's first look is at once, so a root removed during the wait is not trusted for another period."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.threads import blockingCallFromThread

from sfa_omf.server.app import watch_trusted_roots
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.trust.test_gid_chain import root

AN_HOUR_S = 3600.0  # the next periodic look: after the test


def test_a_root_removed_before_the_watch_starts_is_dropped_when_it_starts(running_reactor: Any, tmp_path: Path) -> None:
    (tmp_path / "fed.gid").write_text(root("fed").pem())
    (tmp_path / "other.gid").write_text(root("other").pem())
    verifier = CredentialVerifier(load_trusted_roots(str(tmp_path)), VerdictCache())
    (tmp_path / "other.gid").unlink()  # ...while the server waits for the start-up lock

    blockingCallFromThread(running_reactor, watch_trusted_roots, verifier, AN_HOUR_S)

    assert [anchor.hrn for anchor in verifier.roots.anchors] == ["fed"]
