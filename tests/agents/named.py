"""bind9's named on 127.0.0.1 (free ports), serving the nodes' zone as the aggregate writes it and reloaded with
rndc: for the agent tests and benchmarks/agents_bench.py. It can be stopped and started again (a DNS server that is
down, for real). Needs named, rndc and dig (Debian's bind9 and bind9-dnsutils)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import IO

from sfa_omf.agents.dns import DnsZones
from tests.ports import free_port


class Named:
    """named for ``zone``, whose zone files and views are in ``dns_dir`` (the aggregate's DATA_DIR/dns);
    ``directory`` holds its own configuration, keys and log."""

    def __init__(self, directory: Path, dns_dir: Path, zone: str) -> None:
        self.directory, self.zone = directory, zone
        self.port, control = free_port(), free_port()
        subprocess.run(["rndc-confgen", "-a", "-k", "rndc-key", "-c", str(directory / "rndc.key")], check=True)
        key = (directory / "rndc.key").read_text()
        (directory / "rndc.conf").write_text(
            key + f'options {{ default-key "rndc-key"; default-server 127.0.0.1; default-port {control}; }};\n'
        )
        zones = DnsZones(str(dns_dir), zone, [])
        if not (dns_dir / "views.conf").exists():
            zones.publish([])
        (directory / "named.conf").write_text(
            key
            + f'controls {{ inet 127.0.0.1 port {control} allow {{ 127.0.0.1; }} keys {{ "rndc-key"; }}; }};\n'
            + f'options {{ directory "{directory}"; pid-file "{directory / "named.pid"}"; '
            + f"listen-on port {self.port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; }};\n"
            + zones.server_config()
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.start()

    @property
    def reload_command(self) -> str:
        """What ``[sfa_agents] dns_reload`` must be."""
        return f"rndc -c {self.directory / 'rndc.conf'} reload"

    def start(self) -> None:
        """Run named and wait (bounded) until rndc reaches it."""
        self.log = open(self.directory / "named.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            ["named", "-g", "-c", str(self.directory / "named.conf")], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 30
        while subprocess.run([*self.reload_command.split()[:3], "status"], capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"named did not start: see {self.directory / 'named.log'}")
            time.sleep(0.1)

    def resolve(self, names: list[str], kind: str = "A") -> list[str]:
        """The ``kind`` records (A, AAAA) of each name (one dig for all), '' for a name not (yet) in the zone."""
        queries = [part for name in names for part in (f"{name}.{self.zone}", kind)]
        done = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.port), "+short", "+time=2", *queries], capture_output=True, text=True
        )
        answers = done.stdout.split()
        return answers if len(answers) == len(names) else [*answers, *[""] * (len(names) - len(answers))]

    def stop(self) -> None:
        """Stop named (its PID, and wait for it)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None
