"""PUT and DELETE /resources/leases name the lease in the path, the query or the body: when two of them name
different leases the write is refused (400, BADARGS, both named) and neither lease changes, over real HTTPS on
SQLite and PostgreSQL (test_rest.py's site)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sfa_omf.times import format_time, parse_time
from tests.testbed.omf.test_rest import Site, call, later, site  # noqa: F401  (site: the fixture)


def post(site: Site, name: str, hours: int) -> dict[str, Any]:  # noqa: F811
    window = later(hours)
    body = {
        "name": name,
        "valid_from": window[0],
        "valid_until": window[1],
        "account_attributes": {"name": name},
        "components": [{"name": "node2"}],
    }
    status, answer = call(site, site.bob, "POST", "/resources/leases", body)
    assert status == 200, answer
    return dict(answer["resource_response"]["resource"])


def shown(site: Site, lease: dict[str, Any]) -> tuple[str, str]:  # noqa: F811
    answer = call(site, site.bob, "GET", f"/resources/leases/{lease['uuid']}")[1]["resource_response"]["resource"]
    return answer["valid_until"], answer["status"]


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
@pytest.mark.parametrize("in_path", [True, False], ids=["path", "query"])
def test_a_write_naming_two_leases_is_refused_and_changes_neither(
    site: Site,  # noqa: F811
    method: str,
    in_path: bool,
) -> None:
    hours = 20 + 3 * (2 * (method == "PUT") + in_path)  # one pair of slots per case: the cases share the site
    first = post(site, f"first{hours}", hours)
    second = post(site, f"second{hours}", hours + 1)
    before = (shown(site, first), shown(site, second))
    path = f"/resources/leases/{first['uuid']}" if in_path else f"/resources/leases?uuid={first['uuid']}"
    new_end = format_time(parse_time(second["valid_until"]) + timedelta(hours=1))
    status, answer = call(site, site.bob, method, path, {"uuid": second["uuid"], "valid_until": new_end})
    assert status == 400, answer
    reason = answer["exception"]["reason"]
    assert answer["exception"]["geni_code"] == 1  # BADARGS
    where = "the path" if in_path else "the query"
    assert f"{where} names lease {first['uuid']!r} but the body names lease {second['uuid']!r}" in reason
    assert "nothing was changed" in reason
    assert (shown(site, first), shown(site, second)) == before


def test_the_same_lease_named_in_the_path_and_the_body_is_written(site: Site) -> None:  # noqa: F811
    lease = post(site, "same", 40)
    new_end = format_time(parse_time(lease["valid_until"]) + timedelta(hours=1))
    status, answer = call(
        site, site.bob, "PUT", f"/resources/leases/{lease['uuid']}", {"uuid": lease["uuid"], "valid_until": new_end}
    )
    assert status == 200, answer
    assert answer["resource_response"]["resource"]["valid_until"] == new_end
    status, answer = call(site, site.bob, "DELETE", f"/resources/leases/{lease['uuid']}", {"uuid": lease["uuid"]})
    assert status == 200 and answer["resource_response"]["resource"]["status"] == "cancelled"
