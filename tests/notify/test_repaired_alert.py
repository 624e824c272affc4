"""The reconciler's ``reconciler_repaired`` alert as operators get it: sentences in the e-mail, lists per category
in the webhook (a real SMTP server and a real HTTP receiver on 127.0.0.1; SQLite and PostgreSQL), never the
report's Python repr."""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.message import Message as EmailMessage
from typing import Any

from sfa_omf.calendar.outbox import Outbox
from sfa_omf.notify.alerts import Alerts
from sfa_omf.notify.channels import OPERATOR_SUBSCRIBER, SIGNATURE_HEADER, SmtpSettings, subscription_secret
from sfa_omf.notify.notifier import Notifier, NotifySettings
from sfa_omf.server.app import _backend_task
from sfa_omf.testbed.base import BackgroundTask
from sfa_omf.testbed.oar.backend import ReconcileReport
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import SUBMITTED, OarJobs
from sfa_omf.testbed.oar.repairs import lease_details
from tests.calendar.conftest import node_urn
from tests.notify.conftest import SECRET, SLICE, Booked, Receiver, SmtpServer, signed_with
from tests.testbed.oar.conftest import oar_client, oar_url, oar_users, wait_for_job  # noqa: F401 (site)
from tests.testbed.oar.test_backend import HOUR, Site, job_of, site  # noqa: F401 (the aggregate on the real OAR)

OPERATOR = "urn:publicid:IDN+testbed+user+ops"
TASK = "reconcile the calendar with OAR"
REFUSAL = "OAR refused to reserve it again: There are not enough resources for your request"


class _OarAggregateView:
    """What the server's backend loop uses of the aggregate: its backend's name and its alerts (a real Alerts over
    the test's database)."""

    def __init__(self, booked: Booked, backend: str = "oar") -> None:
        self.alerts = Alerts(booked.database, lambda: booked.clock[0])
        self.backend = _Named(backend)


@dataclass(frozen=True)
class _Named:
    name: str


@dataclass(frozen=True)
class _OtherBackendReport:
    """A repair report of a backend other than OAR (none has its own type yet): only ``changed`` and its text."""

    changed: bool = True

    def __str__(self) -> str:
        return "node2 switched off after its slot"


def _operators_notifier(booked: Booked, smtp: SmtpServer, receiver: Receiver) -> Notifier:
    """A notifier sending the operators' events to an operator's e-mail and to the receiver's webhook."""
    Outbox(booked.database).subscribe(OPERATOR, "email", "ops@example.org")
    return Notifier(
        booked.database,
        NotifySettings(
            smtp=SmtpSettings(port=smtp.port, sender="am@testbed.example", timeout_s=5),
            webhook_secret=SECRET,
            operator_urns=frozenset({OPERATOR}),
            operator_addresses=(receiver.url,),
        ),
        clock=lambda: booked.clock[0],
    )


def _delivered(booked: Booked, smtp: SmtpServer, receiver: Receiver) -> tuple[EmailMessage, dict[str, Any]]:
    """Notice and deliver the recorded events to the operators; their one e-mail and one webhook body."""
    notifier = _operators_notifier(booked, smtp, receiver)
    notifier.notice()
    assert notifier.deliver() == 2
    (mail,) = [m for m in smtp.mailbox.messages if m["To"] == "ops@example.org"]
    ((headers, body),) = receiver.received
    # An operator's URL ([sfa_notify] operators): signed with the operator's secret of it, not with the site's key.
    assert signed_with(subscription_secret(SECRET, OPERATOR_SUBSCRIBER, receiver.url), headers, body)
    assert SIGNATURE_HEADER.lower() in headers and not signed_with(SECRET, headers, body)
    payload: dict[str, Any] = json.loads(body)
    return mail, payload


def _as_read_by_the_round(booked: Booked, report: ReconcileReport) -> ReconcileReport:
    """``report`` with its leases' details read from the calendar, as the reconcile round does when it repaired."""
    report.leases = lease_details(booked.database, OarJobs(booked.database), report.lists())
    return report


def _run_once(booked: Booked, report: object, backend: str = "oar") -> None:
    """One round of the server's backend loop whose reconciler returns ``report``."""
    task = BackgroundTask(TASK, 300, lambda: report, repairs=True)
    _backend_task(_OarAggregateView(booked, backend), task)  # type: ignore[arg-type]


def test_reconciler_repairs_reach_operators_as_sentences_and_lists(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    """A round that made a lease's missing OAR job again (recorded as job 2800), deleted orphan job 2805 and could not
    reserve another lease: the e-mail tells each in words (slice, nodes, job; OAR's words and what to do), the
    webhook gives the ids per category, the lease's details and a one-line ``report``."""
    booked.bookings.mark_provisioned(booked.lease_id)
    OarJobs(booked.database).set(booked.lease_id, SUBMITTED, owner="alice", job_id=2800)
    gone = "0d4bd5a1-0000-4000-8000-000000000000"  # a lease this calendar does not (or no longer) have
    report = ReconcileReport(orphans_deleted=[2805], resubmitted=[booked.lease_id], failed={gone: REFUSAL})
    _run_once(booked, _as_read_by_the_round(booked, report))

    mail, payload = _delivered(booked, smtp, receiver)
    text = mail.get_content().replace("\r\n", "\n")
    assert str(mail["Subject"]) == f"[sfa-omf] {TASK} repaired a mismatch"
    assert "ReconcileReport(" not in text
    window = f"{booked.at(2):%Y-%m-%dT%H:%M:%SZ} .. {booked.at(4):%Y-%m-%dT%H:%M:%SZ} UTC"
    assert (
        f"- Lease {booked.lease_id} (slice {SLICE}, nodes {node_urn('n1')}, {window}): its OAR reservation was "
        "missing (or held another window than the calendar's) and was made again as OAR job 2800.\n"
    ) in text
    assert "- OAR job 2805 had no live lease here (cancelled, expired or ended) and was deleted.\n" in text
    assert f"- Lease {gone}: not repaired: {REFUSAL}\n  What you may do: " in text
    assert f"named sfa-omf_{gone} (oarstat)" in text
    assert "The repairs above need nothing from you" in text

    # Every field the webhook had (event, summary, backend, report, key), and the lists beside them.
    assert payload["event"] == "reconciler_repaired"
    assert payload["summary"] == f"{TASK} repaired a mismatch"
    assert payload["backend"] == "oar" and payload["task"] == TASK
    assert payload["key"].startswith("reconciler_repaired:oar:")
    assert payload["resubmitted"] == [booked.lease_id]
    assert payload["orphans_deleted"] == [2805]
    assert payload["adopted"] == [] and payload["deleted"] == []
    assert payload["failed"] == [gone] and payload["reasons"] == {gone: REFUSAL}
    assert payload["leases"] == {
        booked.lease_id: {
            "slice": SLICE,
            "nodes": [node_urn("n1")],
            "start": f"{booked.at(2):%Y-%m-%dT%H:%M:%SZ}",
            "end": f"{booked.at(4):%Y-%m-%dT%H:%M:%SZ}",
            "job": 2800,
        }
    }
    assert payload["report"] == (
        f"missing OAR reservation made again for 1 lease: {booked.lease_id} as OAR job 2800; "
        f"1 orphan OAR job deleted: 2805; 1 lease not repaired: {gone}"
    )


def test_adopted_and_finished_deletions_are_told_and_another_backends_report_stays_text(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    """An adopted Provision names the job now recorded; a finished deletion of a lease the calendar no longer has is
    told by its id. A report without the OAR reconciler's fields (another backend's) is still sent, as its text."""
    booked.bookings.mark_provisioned(booked.lease_id)
    OarJobs(booked.database).set(booked.lease_id, SUBMITTED, owner="alice", job_id=2801)
    _run_once(booked, _as_read_by_the_round(booked, ReconcileReport(adopted=[booked.lease_id], deleted=["lease-gone"])))
    booked.clock[0] = booked.at(0.1)
    _run_once(booked, _OtherBackendReport(), backend="omf")

    notifier = _operators_notifier(booked, smtp, receiver)
    notifier.notice()
    assert notifier.deliver() == 4
    oar_mail, omf_mail = sorted(
        (m for m in smtp.mailbox.messages if m["To"] == "ops@example.org"), key=lambda m: str(m["X-SFA-OMF-Event"])
    )
    oar_text = oar_mail.get_content().replace("\r\n", "\n")
    assert (
        f"- Lease {booked.lease_id} (slice {SLICE}, nodes {node_urn('n1')}, "
        f"{booked.at(2):%Y-%m-%dT%H:%M:%SZ} .. {booked.at(4):%Y-%m-%dT%H:%M:%SZ} UTC): OAR job 2801 held it but "
        "was not recorded here"
    ) in oar_text
    assert "- Lease lease-gone: its deletion had been interrupted before OAR confirmed it; it is now finished" in (
        oar_text
    )
    assert "  report: node2 switched off after its slot\n" in omf_mail.get_content().replace("\r\n", "\n")
    bodies = {body["backend"]: body for body in (json.loads(raw) for _, raw in receiver.received)}
    assert bodies["oar"]["adopted"] == [booked.lease_id] and bodies["oar"]["deleted"] == ["lease-gone"]
    assert bodies["oar"]["leases"][booked.lease_id]["job"] == 2801
    assert bodies["oar"]["report"] == (
        f"1 unrecorded OAR job recorded: {booked.lease_id} as OAR job 2801; 1 interrupted deletion finished: lease-gone"
    )
    assert bodies["omf"]["report"] == "node2 switched off after its slot"
    assert "resubmitted" not in bodies["omf"]


def test_a_job_deleted_in_the_real_oar_is_told_with_the_job_that_replaced_it(
    site: Site,  # noqa: F811 (the fixture imported above)
    oar_client: OarClient,  # noqa: F811
    smtp: SmtpServer,
    receiver: Receiver,
) -> None:
    """End to end on the real OAR: a provisioned lease's job is deleted with oardel as its owner; the server's
    reconcile task (the backend's own, run by the server's loop) reserves it again, and the operators read the new
    job's number, the slice and the node in the e-mail, and the lease id and job in the webhook."""
    site.allocate(["node6"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    lost = job_of(site, lease_id)
    oar_client.delete_job(lost, user="alice")
    wait_for_job(oar_client, lost, {"Error", "Terminated"})
    (reconcile,) = [task for task in site.backend.background_tasks() if task.repairs]
    _backend_task(site.aggregate, reconcile)
    made = job_of(site, lease_id)
    assert made != lost

    Outbox(site.aggregate.database).subscribe(OPERATOR, "email", "ops@example.org")
    notifier = Notifier(
        site.aggregate.database,
        NotifySettings(
            smtp=SmtpSettings(port=smtp.port, timeout_s=5),
            webhook_secret=SECRET,
            operator_urns=frozenset({OPERATOR}),
            operator_addresses=(receiver.url,),
        ),
    )
    notifier.notice()
    notifier.deliver()
    (mail,) = [m for m in smtp.mailbox.messages if "repaired" in str(m["Subject"])]
    assert (
        f"- Lease {lease_id} (slice {site.pki.slice_urn}, nodes {node_urn('node6')}, "
        f"{site.start:%Y-%m-%dT%H:%M:%SZ} .. {site.start + HOUR:%Y-%m-%dT%H:%M:%SZ} UTC): its OAR reservation was "
        f"missing (or held another window than the calendar's) and was made again as OAR job {made}.\n"
    ) in mail.get_content().replace("\r\n", "\n")
    (body,) = [json.loads(raw) for _, raw in receiver.received if json.loads(raw)["event"] == "reconciler_repaired"]
    assert body["resubmitted"] == [lease_id] and body["leases"][lease_id]["job"] == made


@dataclass(frozen=True)
class _ReportNamingTheEventsFields:
    """A backend's report whose details hold keys the event has itself (``event``, ``summary``, ``backend``)."""

    changed: bool = True

    def alert(self) -> dict[str, Any]:
        return {"report": "node2 rebooted", "event": "node_down", "summary": "nothing happened", "backend": "x"}


def test_a_backends_details_never_replace_the_events_own_fields(
    booked: Booked, smtp: SmtpServer, receiver: Receiver
) -> None:
    """The event's name, summary and backend are the alert's own, whatever keys the backend's details hold: the
    e-mail's subject and the webhook tell the repair, not the details' ``summary``."""
    _run_once(booked, _ReportNamingTheEventsFields(), backend="omf")

    mail, payload = _delivered(booked, smtp, receiver)
    assert str(mail["Subject"]) == f"[sfa-omf] {TASK} repaired a mismatch"
    assert payload["event"] == "reconciler_repaired"
    assert payload["summary"] == f"{TASK} repaired a mismatch"
    assert payload["backend"] == "omf"
    assert payload["report"] == "node2 rebooted"
