"""The rights table: which privilege allows which operation, and the delegation subset rule."""

from __future__ import annotations

import pytest

from sfa_omf.trust.rights import DEFAULT_PRIVILEGES, METHOD_OPERATIONS, allows, covers


@pytest.mark.parametrize(
    ("method", "privileges", "allowed"),
    [
        ("ListResources", DEFAULT_PRIVILEGES["user"], True),
        ("Describe", ("info",), True),
        ("Status", ("info",), True),
        ("Allocate", ("info",), False),
        ("Allocate", DEFAULT_PRIVILEGES["slice"], True),
        ("Provision", ("control",), True),
        ("Delete", ("embed",), True),
        ("Renew", ("bind",), False),
        ("Shutdown", ("control",), True),
        ("Shutdown", DEFAULT_PRIVILEGES["user"], False),
        ("Shutdown", ("authority",), True),
        ("Allocate", ("*",), True),
        ("ListSlices", ("*",), False),
        ("Allocate", ("unknown-privilege",), False),
    ],
)
def test_method_needs(method: str, privileges: tuple[str, ...], allowed: bool) -> None:
    assert allows(privileges, METHOD_OPERATIONS[method]) is allowed


def test_gcf_operation_names_are_known() -> None:
    for operation in ("deleteslice", "getsliceresources", "shutdown", "createsliver", "renewsliver"):
        assert allows(DEFAULT_PRIVILEGES["slice"], operation)


def test_delegation_subset() -> None:
    assert covers("control", "control")
    assert covers("authority", "control")
    assert covers("sa", "info")  # every operation info allows, sa allows too
    assert covers("control", "info") is False  # info allows listnodes, which control does not
    assert covers("embed", "bind") is False
    assert covers("info", "control") is False
