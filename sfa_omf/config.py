"""sfa-omf's configuration file, in the INI form of SFA's /etc/sfa/sfa_config.

An operator who ran SFA recognises the names: ``[sfa] interface_hrn, data_dir``, ``[sfa_registry] host, port``,
``[sfa_aggregate] host, port, type``. sfa-omf's own settings live in ``[sfa_omf]``.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass

CONFIG_FILE_NAME = "sfa-omf.conf"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_REGISTRY_PORT = 12345  # SFA's registry port
DEFAULT_AGGREGATE_PORT = 12346  # SFA's aggregate port


@dataclass(frozen=True)
class Settings:
    """The settings the trust layer and the local authority need."""

    interface_hrn: str
    data_dir: str
    registry_host: str = DEFAULT_HOST
    registry_port: int = DEFAULT_REGISTRY_PORT
    aggregate_host: str = DEFAULT_HOST
    aggregate_port: int = DEFAULT_AGGREGATE_PORT
    aggregate_type: str = "omf"
    database_url: str = ""  # empty: the embedded default, SQLite in data_dir

    @property
    def calendar_url(self) -> str:
        return self.database_url or f"sqlite:///{os.path.join(os.path.abspath(self.data_dir), 'sfa-omf.sqlite')}"

    @property
    def trusted_roots_dir(self) -> str:
        return os.path.join(self.data_dir, "trusted_roots")

    @property
    def registry_url(self) -> str:
        # sfi.py wants http:// here and speaks TLS anyway (it mangles https:// URLs).
        return f"http://{self.registry_host}:{self.registry_port}/"

    @property
    def aggregate_url(self) -> str:
        return f"http://{self.aggregate_host}:{self.aggregate_port}/"


def write_config(path: str, settings: Settings) -> None:
    """Write settings as an SFA-style INI file (refuses to overwrite an existing one)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser["sfa"] = {"interface_hrn": settings.interface_hrn, "data_dir": settings.data_dir}
    parser["sfa_registry"] = {"host": settings.registry_host, "port": str(settings.registry_port)}
    parser["sfa_aggregate"] = {
        "host": settings.aggregate_host,
        "port": str(settings.aggregate_port),
        "type": settings.aggregate_type,
    }
    parser["sfa_omf"] = {"trusted_roots": settings.trusted_roots_dir, "database_url": settings.calendar_url}
    with open(path, "x", encoding="utf-8") as handle:
        handle.write("# sfa-omf configuration (SFA's sfa_config names; [sfa_omf] holds sfa-omf's own)\n")
        parser.write(handle)


def read_config(path: str) -> Settings:
    """Read an SFA-style INI file written by write_config or by an operator."""
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path, encoding="utf-8"):
        raise FileNotFoundError(f"cannot read configuration file {path}")
    try:
        return Settings(
            interface_hrn=parser.get("sfa", "interface_hrn"),
            data_dir=parser.get("sfa", "data_dir", fallback=os.path.dirname(os.path.abspath(path))),
            registry_host=parser.get("sfa_registry", "host", fallback=DEFAULT_HOST),
            registry_port=parser.getint("sfa_registry", "port", fallback=DEFAULT_REGISTRY_PORT),
            aggregate_host=parser.get("sfa_aggregate", "host", fallback=DEFAULT_HOST),
            aggregate_port=parser.getint("sfa_aggregate", "port", fallback=DEFAULT_AGGREGATE_PORT),
            aggregate_type=parser.get("sfa_aggregate", "type", fallback="omf"),
            database_url=parser.get("sfa_omf", "database_url", fallback=""),
        )
    except (configparser.Error, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
