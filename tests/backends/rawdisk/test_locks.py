"""rawdisk locks the disks it may write: another instance's disks are never taken, at start-up or later."""

from __future__ import annotations

import os

import anyio
import pytest

from backends import errors
from backends.rawdisk.backend import RawdiskBackend
from backends.rawdisk.inventory import State
from backends.rawdisk.options import RawdiskOptions
from backends.system.runner import ProcessRunner
from tests.backends.rawdisk.support import MIB, FakeDisks, fake_disks

pytestmark = [pytest.mark.anyio, pytest.mark.root]

disks = pytest.fixture(fake_disks, name="disks")


def backend(pattern: str, *, watch: bool = False) -> RawdiskBackend:
    return RawdiskBackend("node-a", RawdiskOptions(devices=(pattern,)), ProcessRunner(), watch=watch)


async def exclusive(pattern: str) -> RawdiskBackend:
    b = backend(pattern)
    await b.lock_storage()
    await b.start()
    return b


async def test_a_second_instance_on_the_same_disks_does_not_start(disks: FakeDisks) -> None:
    disks.add("a", 64 * MIB)
    first = await exclusive(disks.pattern)
    try:
        second = backend(disks.pattern)
        await second.lock_storage()
        with pytest.raises(errors.StorageInUse, match=f"is in use by PID {os.getpid()}"):
            await second.start()
    finally:
        await first.close()
    again = await exclusive(disks.pattern)  # closed: the disks are free to take
    await again.close()


async def test_a_disk_that_appears_held_by_another_instance_is_excluded(disks: FakeDisks) -> None:
    disks.add("a", 64 * MIB)
    watcher = backend(disks.pattern, watch=True)
    await watcher.lock_storage()
    await watcher.start()
    try:
        disks.add("b", 64 * MIB)
        other = await exclusive(disks.link("b"))  # another instance takes the new disk first
        try:
            await watcher.rescan()
            found = {os.path.basename(d.path): d for d in watcher.inventory()}
            assert found["disk-a"].state is State.FREE
            assert found["disk-b"].state is State.EXCLUDED
            assert "held by another localcsi instance" in found["disk-b"].reason
        finally:
            await other.close()
        await watcher.rescan()
        with anyio.fail_after(10):
            assert {d.state for d in watcher.inventory()} == {State.FREE}
    finally:
        await watcher.close()
