"""Shared fixtures: the anyio backend, the root gate, and a real driver process."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import DriverProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real loop devices, mkfs and mount(2)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    """A real ``localcsi serve --backend loopfile`` process on a unix socket, cleaned up afterwards."""
    with DriverProcess(tmp_path_factory.mktemp("driver")).running() as proc:
        yield proc
