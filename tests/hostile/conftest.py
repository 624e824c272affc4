"""One real aggregate and registry per test module of the hostile suite (tests/hostile/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.hostile.harness import LogTrap, World, start_world, stop_world


@pytest.fixture(scope="module")
def world(running_reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with LogTrap.installed() as trap:
        started = start_world(running_reactor, tmp_path_factory.mktemp("hostile") / "authority", trap)
        try:
            yield started
        finally:
            stop_world(started)
