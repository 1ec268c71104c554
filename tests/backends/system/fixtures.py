"""Fixtures for the system layer: scratch directories, images, loop devices, mounts.

Imported by conftest.py here and by tests/backends/test_node.py.

Everything a fixture creates is undone in its finalizer, even when the test
fails: mounts first (topmost first), then loop devices, then files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from backends.system import loop
from backends.system import mount as mnt

DATA = Path(__file__).parents[2] / "data" / "system"


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A unique directory; whatever is mounted below it is unmounted afterwards."""
    path = Path(tempfile.mkdtemp(prefix="localcsi-sys-"))
    try:
        yield path
    finally:
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def unmount_below(root: Path) -> None:
    """Lazily unmount every mount at or below ``root`` (deepest, newest first)."""
    for _ in range(64):
        text = Path("/proc/self/mountinfo").read_text()
        inside = [m for m in mnt.parse_mountinfo(text) if m.mount_point == str(root) or
                  m.mount_point.startswith(str(root) + "/")]  # fmt: skip
        if not inside:
            return
        subprocess.run(["umount", "-l", inside[-1].mount_point], check=False)


def make_image(directory: Path, size: int, name: str = "image") -> Path:
    path = directory / name
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


LoopFactory = Callable[..., Awaitable[loop.LoopDevice]]


@pytest.fixture
async def loops(scratch: Path) -> AsyncIterator[LoopFactory]:
    """attach(...) that remembers the device and detaches it at teardown
    (after unmounting whatever the test mounted below ``scratch``)."""
    attached: list[str] = []

    async def factory(backing_file: str | Path, **kwargs: object) -> loop.LoopDevice:
        device = await loop.attach(str(backing_file), **kwargs)  # type: ignore[arg-type]
        attached.append(device.path)
        return device

    yield factory
    unmount_below(scratch)
    for path in reversed(attached):
        with contextlib.suppress(Exception):
            await loop.detach(path)


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


CAP_SYS_RESOURCE = 24


def is_root() -> bool:
    return os.geteuid() == 0
