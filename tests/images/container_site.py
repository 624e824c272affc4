"""An aggregate with lease containers behind real TLS on loopback (the calendar on SQLite, LXC real when the bridge
is there), and a clock the test moves: the slot's start and end come when the test says, not at a time of day."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.images.instances import Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.store import ImageStore
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource
from sfa_omf.server.xmlrpc import make_site as http_site
from sfa_omf.times import utcnow
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki
from tests.tls_harness import Listener, proxy, reactor

GENI_V3 = {"type": "GENI", "version": "3"}
NODE = "urn:publicid:IDN+testbed+node+node1"
IMAGE_TEXT = "made by the tools image\n"


class Clock:
    """Now, as the test decides (starts at the real now, on a whole second)."""

    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@dataclass
class Site:
    url: str
    aggregate: Aggregate
    store: ImageStore
    instances: Instances
    host: LxcHost
    clock: Clock
    database: Database

    def alice(self, pki: DemoPki) -> Any:
        return self.client(pki, "alice")

    def client(self, pki: DemoPki, name: str) -> Any:
        sfi = pki.users[name].sfi_dir
        return proxy(self.url, str(sfi / f"testbed.{name}.user.gid"), str(sfi / f"testbed.{name}.pkey"))

    def restarted(self) -> Aggregate:
        """A second aggregate over the same database and LXC directory: the server after a restart."""
        instances = Instances(self.database, self.host, str(self.instances.network), self.store, ssh_timeout_s=30)
        return Aggregate(
            self.aggregate.settings,
            self.database,
            self.aggregate.verifier,
            clock=self.clock,
            images=self.store,
            instances=instances,
        )


def tools_image(path: Path) -> Path:
    """A repository image: a tar of files laid over the container's base (here one file, /etc/sfa-image)."""
    with tarfile.open(path, "w") as tar:
        data = IMAGE_TEXT.encode()
        info = tarfile.TarInfo("etc/sfa-image")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def make_site(listener: Listener, pki: DemoPki, tmp_path: Path, bridge: str, network: str) -> Site:
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    clock = Clock()
    store = ImageStore(database, tmp_path / "images")
    store.add(tools_image(tmp_path / "tools.tar"), "tools", "root", clock(), os_name="busybox")
    host = LxcHost(bridge, lxc_path=str(tmp_path / "lxc"))  # this test's containers only
    instances = Instances(database, host, network, store, ssh_timeout_s=30)
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache()),
        clock=clock,
        images=store,
        instances=instances,
    )
    aggregate.inventory.add_node(NodeSpec(NODE, "node1"))
    site = http_site({}, XmlRpcResource(ApiV3(aggregate), listener.pool(4), reactor, 4 << 20), 4 << 20, 60)
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    port = listener.listen(site, tls)
    return Site(f"https://127.0.0.1:{port}/", aggregate, store, instances, host, clock, database)


TWO = '<sliver_type name="lxc" inst:count="2"><disk_image name="tools"/></sliver_type>'


def request(sliver_type: str = TWO) -> str:
    """node1 from now (no time given: the default duration), with the sliver type given."""
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:inst="http://sfa-omf.org/rspec/ext/instances/1">'
        f'<node client_id="n1" component_id="{NODE}" exclusive="true">{sliver_type}</node></rspec>'
    )


def cred(xml: str) -> dict[str, str]:
    return {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": xml}


def ok(answer: dict[str, Any]) -> Any:
    assert answer["code"]["geni_code"] == 0, answer["output"]
    return answer["value"]


def site_on_the_bridge(listener: Listener, pki: DemoPki, tmp_path: Path) -> Iterator[Site]:
    """A Site whose containers are on the tests' LXC bridge; every container is destroyed after, whatever happened
    (fixtures ``yield from`` it)."""
    from tests.images.lxc_env import bridge, bridge_network

    made = make_site(listener, pki, tmp_path, bridge(), str(bridge_network().network))
    yield made
    for record in made.host.instances():
        made.host.destroy(record.name)
