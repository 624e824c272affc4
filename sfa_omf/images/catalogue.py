"""Which disk images a node can run (what ListResources advertises in its <disk_image> elements) and the check of
a request's images against them.

A node can run the repository's images whose hardware types include its own (an image with none runs everywhere),
and the images the operator declared on the node itself (``sfa-omf node add --image``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sfa_omf.calendar.records import NodeRecord
from sfa_omf.errors import BadArgs
from sfa_omf.images.records import ImageRecord


@dataclass(frozen=True)
class NodeImage:
    """An image a node can run, as advertised."""

    name: str
    os: str = ""
    version: str = ""
    description: str = ""


def node_images(node: NodeRecord, repository: Sequence[ImageRecord], user: str | None = None) -> tuple[NodeImage, ...]:
    """The node's own images, then the repository's that run on it (a repository label wins over the node's) and
    that ``user`` may use (None: public images only, as ListResources advertises them)."""
    found: dict[str, NodeImage] = {}
    for image in node.disk_images:
        name = image.get("name", "")
        if name:
            found[name] = NodeImage(name, image.get("os", ""), image.get("version", ""), image.get("description", ""))
    for record in repository:
        if record.runs_on(node.hardware_type) and record.usable_by(user):
            found[record.label] = NodeImage(record.label, record.os, record.version, record.description)
    return tuple(found.values())


def check_requested_images(
    wanted: Iterable[tuple[str, str]],
    nodes: Mapping[str, NodeRecord],
    repository: Sequence[ImageRecord],
    user: str | None = None,
) -> None:
    """Every (component id, image label) a request names must be an image that node can run and ``user`` may use;
    BADARGS otherwise, naming the labels that node can run. Nodes unknown here are left to the booking."""
    for component_id, label in wanted:
        node = nodes.get(component_id)
        if not label or node is None:
            continue
        runnable = [image.name for image in node_images(node, repository, user)]
        if label in runnable:
            continue
        known = ", ".join(sorted(runnable)) if runnable else "none"
        in_repository = next((record for record in repository if record.label == label), None)
        if in_repository is not None and not in_repository.usable_by(user):
            raise BadArgs(private_refusal(label))
        if in_repository is not None:
            raise BadArgs(
                f"disk image {label!r} does not run on {node.component_name} (hardware type "
                f"{node.hardware_type or 'none'}; the image runs on {', '.join(in_repository.hardware_types)}); "
                f"images {node.component_name} can run: {known}. Nothing was booked"
            )
        raise BadArgs(
            f"unknown disk image {label!r} for {node.component_name}: images it can run (as ListResources "
            f"advertises them): {known}. Nothing was booked"
        )


def private_refusal(label: str) -> str:
    """Why a request may not name somebody else's private image, and how it becomes usable."""
    return (
        f"image {label!r} is private to the user who saved it: ask them to use it, or an operator to publish it "
        f"(sfa-omf image publish {label}). Nothing was booked"
    )
