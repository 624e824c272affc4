"""The image repository's store: add, list, show, remove, and removal refused while a lease uses the image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sfa_omf.calendar.records import BookingRequest
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import NOW, SLICE, SLICE_EXPIRES, Calendar, at, node_urn
from tests.images.conftest import image_file


def test_add_copies_the_file_with_its_checksum_size_who_and_when(store: ImageStore, tmp_path: Path) -> None:
    source = image_file(tmp_path / "debian.img", 10 * 1024 * 1024 + 17)
    record = store.add(source, "debian12", added_by="alice", now=NOW, os_name="Debian", version="12")
    content = source.read_bytes()
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert record.size == len(content)
    assert Path(record.path).read_bytes() == content
    assert Path(record.path).parent == store.directory
    assert (record.label, record.os, record.version, record.added_by, record.added) == (
        "debian12",
        "Debian",
        "12",
        "alice",
        NOW,
    )
    assert store.images() == [record]
    assert store.show("debian12") == record


def test_a_taken_label_is_refused_and_leaves_no_file(store: ImageStore, tmp_path: Path) -> None:
    store.add(image_file(tmp_path / "a.img", 5000), "base", added_by="alice", now=NOW)
    with pytest.raises(GeniError) as refused:
        store.add(image_file(tmp_path / "b.img", 6000, seed=2), "base", added_by="bob", now=NOW)
    assert refused.value.code == GeniCode.ALREADYEXISTS
    assert "remove it first or choose another label" in refused.value.message
    assert len(list(store.directory.iterdir())) == 1
    assert store.show("base").size == 5000  # the first one is untouched


@pytest.mark.parametrize("label", ["", "-dash", "has space", "semi;colon", "a/b", "x" * 101, "é"])
def test_bad_labels_are_refused_before_anything_is_written(store: ImageStore, tmp_path: Path, label: str) -> None:
    with pytest.raises(GeniError) as refused:
        store.add(image_file(tmp_path / "a.img", 100), label, added_by="alice", now=NOW)
    assert refused.value.code == GeniCode.BADARGS
    assert "letters, digits" in refused.value.message
    assert store.images() == []
    assert not store.directory.exists()


def test_a_missing_source_is_refused(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(GeniError) as refused:
        store.add(tmp_path / "nothing.img", "x", added_by="alice", now=NOW)
    assert refused.value.code == GeniCode.BADARGS
    assert "nothing.img: no such regular file" in refused.value.message
    assert store.images() == []


def test_remove_deletes_row_and_file(store: ImageStore, tmp_path: Path) -> None:
    record = store.add(image_file(tmp_path / "a.img", 3000), "base", added_by="alice", now=NOW)
    assert store.remove("base", NOW) == record
    assert store.images() == []
    assert not Path(record.path).exists()
    with pytest.raises(GeniError) as unknown:
        store.remove("base", NOW)
    assert unknown.value.code == GeniCode.SEARCHFAILED
    assert "known labels: none yet" in unknown.value.message


def test_unknown_label_names_the_known_ones(store: ImageStore, tmp_path: Path) -> None:
    store.add(image_file(tmp_path / "a.img", 10), "alpha", added_by="alice", now=NOW)
    store.add(image_file(tmp_path / "b.img", 10), "beta", added_by="alice", now=NOW)
    with pytest.raises(GeniError) as unknown:
        store.show("gamma")
    assert unknown.value.code == GeniCode.SEARCHFAILED
    assert "known labels: alpha, beta" in unknown.value.message


def test_removal_is_refused_while_a_current_or_future_lease_uses_the_image(
    calendar: Calendar, store: ImageStore, tmp_path: Path
) -> None:
    record = store.add(image_file(tmp_path / "a.img", 3000), "base", added_by="alice", now=NOW)
    current = calendar.bookings.book(
        SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(0), at(2), disk_image="base")]
    ).leases[0]
    future = calendar.bookings.book(
        SLICE,
        SLICE_EXPIRES,
        [BookingRequest(node_urn(name), at(24), at(25), disk_image="base") for name in ("n1", "n2")],
    ).leases[0]
    calendar.bookings.mark_provisioned(current.id)
    with pytest.raises(GeniError) as refused:
        store.remove("base", at(1))
    assert refused.value.code == GeniCode.REFUSED
    message = refused.value.message
    assert f"lease {current.id} of {SLICE} (provisioned" in message
    assert f"lease {future.id} of {SLICE} (allocated" in message
    assert f"{node_urn('n1')}, {node_urn('n2')}" in message
    assert "image_in_use" in message
    assert store.show("base") == record and Path(record.path).exists()  # nothing changed
    assert [use.lease_id for use in store.uses("base", at(1))] == [current.id, future.id]

    calendar.bookings.cancel(future.id)
    with pytest.raises(GeniError) as still:  # the current lease still runs it
        store.remove("base", at(1))
    assert future.id not in still.value.message and current.id in still.value.message
    assert store.remove("base", at(2)) == record  # the current lease's slot is over: nothing uses it any more
    assert not Path(record.path).exists()


def test_another_image_in_use_does_not_block(calendar: Calendar, store: ImageStore, tmp_path: Path) -> None:
    store.add(image_file(tmp_path / "a.img", 30), "base", added_by="alice", now=NOW)
    store.add(image_file(tmp_path / "b.img", 30), "other", added_by="alice", now=NOW)
    calendar.bookings.book(SLICE, SLICE_EXPIRES, [BookingRequest(node_urn("n1"), at(1), at(2), disk_image="other")])
    assert store.remove("base", NOW).label == "base"
    assert store.labels() == ["other"]


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("os_name", "Debian\x1b[31m", "os"),  # an ANSI colour pasted from a terminal
        ("version", "12\n", "version"),
        ("description", "base image\x00", "description"),
        ("hardware_types", ["pc\x07"], "hardware type"),
        ("version", "1" * 101, "version"),
    ],
)
def test_text_an_advertisement_cannot_carry_is_refused_and_nothing_is_added(
    store: ImageStore, tmp_path: Path, field: str, value: object, said: str
) -> None:
    """One image with a control character in its text made every ListResources fail (lxml refuses it)."""
    with pytest.raises(GeniError) as refused:
        store.add(image_file(tmp_path / "a.img", 5000), "base", added_by="alice", now=NOW, **{field: value})
    assert refused.value.code == GeniCode.BADARGS and said in str(refused.value)
    assert store.images() == []
    assert not store.directory.exists() or not any(store.directory.iterdir())


def test_a_description_keeps_its_line_ends_and_tabs(store: ImageStore, tmp_path: Path) -> None:
    record = store.add(
        image_file(tmp_path / "a.img", 5000), "base", added_by="alice", now=NOW, description="line one\n\tline two"
    )
    assert record.description == "line one\n\tline two"
