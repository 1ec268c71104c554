"""The spec's error tables (tests/error_tables.py) against ``localcsi serve --backend lvm``, thin and thick.

The same rows as on loopfile and rawdisk (tests/csi/test_error_tables.py), on real device-mapper. The busy rows
hold calls in flight on a volume group of the test's own, whose PVs' images sit on an ext4 the test freezes: LVM's
metadata writes (the tags a publication changes) then block, holding the volume's lock.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.error_tables import ATTACH_LIMIT, freezable, run_busy, run_table
from tests.kernel.lvmdriver import lvm_driver
from tests.kernel.lvmtools import VolumeGroup, volume_group
from tests.support import MIB, assert_no_leaks

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio]
LIMIT = ("--max-volumes-per-node", str(ATTACH_LIMIT))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("thin", [True, False], ids=["thin", "thick"])
async def test_lvm_answers_every_row_with_the_spec_code(thin: bool, lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    proc = lvm_driver(tmp_path, lvm_vg, thin=thin, extra=LIMIT)
    proc.start(timeout=120)
    try:
        wrong = await run_table(proc, at_least=70 if thin else 60)
    finally:
        proc.cleanup()
    assert not wrong, "rows answered other codes than the spec's:\n  " + "\n  ".join(wrong)
    assert_no_leaks(proc)


@pytest.mark.timeout(900)
async def test_every_call_on_a_busy_lvm_volume_or_name_is_aborted(tmp_path: Path) -> None:
    with freezable(Path(tempfile.mkdtemp(prefix="lvm-frozen-")), 1600 * MIB) as storage, \
            volume_group(storage, 640 * MIB, 512 * MIB) as vg:
        proc = lvm_driver(tmp_path, vg, thin=True, extra=LIMIT)
        proc.start(timeout=120)
        try:
            wrong = await run_busy(proc, storage, at_least=11)
        finally:
            proc.cleanup()
    assert not wrong, "calls on a busy volume answered other codes than ABORTED:\n  " + "\n  ".join(wrong)
