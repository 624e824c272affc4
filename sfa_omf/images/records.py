"""Plain data of the image repository: what the store hands out and what a refusal names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ImageRecord:
    """One image of the repository. ``path`` is its file in the image store."""

    label: str
    path: str
    sha256: str
    size: int
    os: str
    version: str
    description: str
    hardware_types: tuple[str, ...]  # empty: every node can run it
    added_by: str
    added: datetime
    private: bool = False  # saved from a container: only added_by may use it until an operator publishes it

    def usable_by(self, user: str | None) -> bool:
        """True when ``user`` (a user URN; None: anybody, as advertised) may start nodes or containers from it."""
        return not self.private or (user is not None and user == self.added_by)

    def runs_on(self, hardware_type: str) -> bool:
        """True when a node of this hardware type can run the image."""
        return not self.hardware_types or hardware_type in self.hardware_types


@dataclass(frozen=True)
class ImageUse:
    """A current or future lease whose slivers name an image (why the image cannot be removed now)."""

    lease_id: str
    slice_urn: str
    start: datetime
    end: datetime
    state: str
    nodes: tuple[str, ...]
