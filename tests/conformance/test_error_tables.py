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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.rawdisk.support import FakeDisks
from tests.error_tables import ATTACH_LIMIT, BUSY_ROWS, ROWS, expected_rpcs, freezable, rpcs_of, run_busy, run_table
from tests.nodepaths import kubelet_driver
from tests.support import MIB, DriverProcess

pytestmark = [pytest.mark.anyio, pytest.mark.root]

BACKENDS = ["loopfile", "rawdisk"]


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


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_row_of_every_rpc_answers_the_spec_code(backend: str, tmp_path: Path) -> None:
    with driver_for(backend, tmp_path) as proc:
        wrong = await run_table(proc, at_least=70)
    assert not wrong, "rows answered other codes than the spec's:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_call_on_a_busy_volume_or_name_is_aborted(backend: str, tmp_path: Path) -> None:
    with driver_for(backend, tmp_path, freeze_storage=True) as proc:
        storage = proc.data_dir if backend == "loopfile" else proc.root.parent / "images"
        wrong = await run_busy(proc, storage, at_least=11)
    assert not wrong, "calls on a busy volume answered other codes than ABORTED:\n  " + "\n  ".join(wrong)


def test_the_tables_cover_every_rpc_that_can_fail() -> None:
    missing = expected_rpcs() - rpcs_of(ROWS + BUSY_ROWS)
    assert not missing, f"RPCs without a row: {sorted(missing)}"
