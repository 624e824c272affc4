"""Notifications from the running aggregate: an Allocate over TLS answers at once while the SMTP server is down, and
its e-mail arrives, once, when the server comes up (the notifier runs beside the AM calls, never inside them)."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.models import NotifyOutbox
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server import app
from sfa_omf.times import format_time, utcnow
from tests.notify.conftest import SmtpServer, free_port
from tests.tls_harness import proxy

NODE = "urn:publicid:IDN+lab+node+n1"
SLICE = "urn:publicid:IDN+lab+slice+demo"
ANN = "urn:publicid:IDN+lab+user+ann"


def wait_for(condition: Any, what: str, limit_s: float = 60) -> None:
    """Poll until condition() holds (the notifier runs every few tenths of a second here); fail saying what."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit_s} s for {what}")
        time.sleep(0.1)


def test_am_calls_never_wait_for_the_mail_server(
    running_reactor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "NOTIFY_PERIOD_S", 0.2)
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    smtp_port = free_port()  # nothing listens yet
    settings = dataclasses.replace(
        read_config(str(tmp_path / "lab" / "sfa-omf.conf")), notify_enabled=True, notify_smtp_port=smtp_port
    )
    aggregate = app.build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec(NODE, "n1"))
    outbox = Outbox(aggregate.database)
    outbox.subscribe(ANN, "email", "ann@example.org")
    sfi = Path(report.sfi_dirs["ann"])
    server = blockingCallFromThread(running_reactor, app.start_aggregate, settings, aggregate, 0)
    smtp = SmtpServer(smtp_port)
    started = False
    try:
        am = proxy(f"https://127.0.0.1:{server.port_number}/", str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey"))
        start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
        rspec = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
            'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
            f'<ol:lease client_id="l" valid_from="{format_time(start)}" '
            f'valid_until="{format_time(start + timedelta(hours=1))}"/>'
            f'<node client_id="n1" component_id="{NODE}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
        )
        credential = {
            "geni_type": "geni_sfa",
            "geni_version": "3",
            "geni_value": (sfi / "lab.ann-lab.demo.slice.cred").read_text(),
        }
        answer = am.Allocate(SLICE, [credential], rspec, {})
        assert answer["code"]["geni_code"] == 0, answer["output"]
        wait_for(lambda: outbox.counts().pending == 1 and outbox.due(limit=1) == [], "a failed first attempt")
        smtp.start()
        started = True
        # The retry comes after the backoff (30 s); bring it forward rather than wait.
        with aggregate.database.write() as session:
            session.execute(update(NotifyOutbox).values(next_attempt_s=0))
        wait_for(lambda: outbox.counts().sent == 1, "the e-mail to be sent")
        assert [str(m["X-SFA-OMF-Event"]).split(":")[1] for m in smtp.mailbox.messages] == ["allocated"]
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        if started:
            smtp.stop()
        aggregate.database.dispose()
