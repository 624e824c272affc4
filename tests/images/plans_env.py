"""Helpers for tests of lease plans: where a node reports, and the node command run in a process of its own."""

from __future__ import annotations

from pathlib import Path

from sfa_omf.images.node_plans import LeasePlan, LeasePlans, open_signed
from sfa_omf.images.plan_signing import KIND_PLAN


def plan_file(plans: LeasePlans, lease_id: str) -> LeasePlan:
    """The lease's plan as its file holds it, its signature checked (what the node command reads)."""
    text = plans.plan_path(lease_id).read_text()
    return LeasePlan.from_json(open_signed(plans.signer.verifier, KIND_PLAN, text))


def report_of(plans: LeasePlans, lease_id: str) -> Path:
    """Where the lease's run reports on its current plan (its first node's directory)."""
    plan = plans.read(lease_id)
    assert plan is not None, f"lease {lease_id} has no plan the aggregate signed"
    return plans.report_path(lease_id, plan.nodes[0])


def node_script(runs: Path, signers: Path, setup: str = "") -> str:
    """``python -c`` text running the node command's main on argv with its run records in ``runs``, trusting the
    keys in ``signers`` (a node's /etc/sfa-omf/plan-signers), after ``setup`` (more statements, ``; ``-joined)."""
    return (
        "import sys; from pathlib import Path; from sfa_omf.images import lxc, node_containers as n; "
        f"n.RUNS_DIR = Path({str(runs)!r}); n.SIGNERS_FILE = Path({str(signers)!r}); "
        f"{setup + '; ' if setup else ''}sys.exit(n.main(sys.argv[1:]))"
    )
