"""The CSI spec's error tables, RPC by RPC, against a real ``localcsi serve`` on every backend this host runs.

Each row is one condition of one RPC's table and the code the spec (or, where the spec leaves room, this driver's
documented choice) gives it: a missing field (sent with an id no one issued, so the check must come before the
lookup), an unknown id, the wrong node, an incompatible repeat, a path holding something else, exhausted capacity.
The busy-volume rows need a call held in flight: the driver's storage sits on a filesystem of the test's own that
the test freezes, so a mutation blocks there holding its volume's lock while every other call on that volume is
sent. The lvm rows run in the kernel lane (tests/kernel/test_lvm_error_tables.py) from the same tables.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from backends.base import snapshot_id_for, volume_id_for
from tests.backends.rawdisk_support import FakeDisks
from tests.error_tables import BUSY_ROWS, ROWS, World, check_rows, expected_rpcs, hold_busy, rpcs_of
from tests.lifecycle import kubelet_driver
from tests.support import MIB, DriverProcess, connect

pytestmark = [pytest.mark.anyio, pytest.mark.root]

#: The attach limit every driver here runs with (the exhausted row of ControllerPublishVolume fills it).
ATTACH_LIMIT = 3
BACKENDS = ["loopfile", "rawdisk"]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


@contextlib.contextmanager
def freezable(directory: Path, size: int = 768 * MIB) -> Iterator[Path]:
    """An ext4 filesystem of the test's own mounted at ``directory`` (so the test may freeze it)."""
    image = directory.with_name(directory.name + ".fs")
    with image.open("wb") as handle:
        handle.truncate(size)
    sh("mkfs.ext4", "-q", "-F", str(image))
    directory.mkdir(parents=True, exist_ok=True)
    sh("mount", "-o", "loop", str(image), str(directory))
    try:
        yield directory
    finally:
        subprocess.run(["fsfreeze", "-u", str(directory)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def driver_for(backend: str, root: Path, *, freeze_storage: bool = False) -> Iterator[DriverProcess]:
    """A driver of ``backend`` with its kubelet directory and attach limit; its storage on a filesystem the test
    may freeze when ``freeze_storage``."""
    limit = ("--max-volumes-per-node", str(ATTACH_LIMIT))
    with contextlib.ExitStack() as stack:
        if backend == "loopfile":
            if freeze_storage:
                stack.enter_context(freezable(root / "volumes"))
            proc = kubelet_driver(root, *limit)
        else:
            disks = FakeDisks()
            stack.callback(disks.cleanup)
            snapshots = disks.root / "snapshots"
            if freeze_storage:  # the disks' images and the snapshot images on one filesystem to freeze
                stack.enter_context(freezable(disks.images))
                snapshots = disks.images / "snapshots"
            for i, size in enumerate((66, 66, 66, 66, 140, 140)):
                disks.add(f"d{i}", size * MIB)
            proc = kubelet_driver(disks.root / "driver", *limit, "--rawdisk-device", disks.pattern,
                                  "--rawdisk-snapshot-dir", str(snapshots), backend="rawdisk")
        stack.callback(proc.cleanup)
        proc.start()
        yield proc


@contextlib.asynccontextmanager
async def world_of(proc: DriverProcess) -> AsyncIterator[World]:
    async with connect(proc.socket_path) as c:
        world = await World.build(c, proc)
        try:
            yield world
        finally:
            with anyio.CancelScope(shield=True):
                await world.tear_down()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_row_of_every_rpc_answers_the_spec_code(backend: str, tmp_path: Path) -> None:
    with driver_for(backend, tmp_path) as proc:
        async with world_of(proc) as world:
            before = world.mounts()
            assert sum(row.applies(world)[0] for row in ROWS) >= 70
            wrong = await check_rows(world, ROWS)
            assert world.mounts() == before, "an error row changed what is mounted"
            assert world.staged.read(5) == b"alive", "an error row touched a published volume's data"
    assert not wrong, "rows answered other codes than the spec's:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_call_on_a_busy_volume_or_name_is_aborted(backend: str, tmp_path: Path) -> None:
    with driver_for(backend, tmp_path, freeze_storage=True) as proc:
        storage = proc.data_dir if backend == "loopfile" else proc.root.parent / "images"
        async with world_of(proc) as world:
            started = time.monotonic()
            async with hold_busy(world, storage, name="pvc-held", snapshot="snap-held") as held:
                assert sum(row.applies(world)[0] for row in BUSY_ROWS) >= 11
                wrong = await check_rows(world, BUSY_ROWS)
                assert held.volume_id == world.busy.volume_id
                assert held.name_id == volume_id_for("pvc-held")
                assert held.snapshot_id == snapshot_id_for("snap-held")
            assert time.monotonic() - started < 60
    assert not wrong, "calls on a busy volume answered other codes than ABORTED:\n  " + "\n  ".join(wrong)


def test_the_tables_cover_every_rpc_that_can_fail() -> None:
    missing = expected_rpcs() - rpcs_of(ROWS + BUSY_ROWS)
    assert not missing, f"RPCs without a row: {sorted(missing)}"
