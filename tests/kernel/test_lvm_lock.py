"""The lvm driver owns its volume group alone, and reports the health of its active LVs' filesystems truthfully
(kernel lane: real LVM and device-mapper).

A second ``localcsi serve`` on the same VG (another socket path, as a DaemonSet update with surge starts one)
exits at once: the first holds a lock on the device node of every PV of the VG.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from csi.gen.csi import v1 as csi
from tests.backends.test_health import everywhere
from tests.kernel.lvmdriver import lvm_driver
from tests.kernel.lvmtools import VolumeGroup
from tests.kernel.test_lvm_driver import LvmLifecycle
from tests.support import MIB, assert_no_leaks, connect, mount_cap

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(600)]


async def test_a_second_driver_on_the_volume_group_exits(tmp_path: Path, lvm_vg: VolumeGroup) -> None:
    first = lvm_driver(tmp_path / "first", lvm_vg, thin=True)
    first.start(timeout=120)
    try:
        assert first.proc is not None
        second = lvm_driver(tmp_path / "second", lvm_vg, thin=True)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="driver exited with 2"):
            second.start(timeout=120)
        assert time.monotonic() - started < 60
        log = second.log()
        assert f"is in use by PID {first.proc.pid}" in log and lvm_vg.pvs[0] in log, log
        assert "lvm backend on VG" not in log
        async with connect(first.socket_path) as c:  # the first goes on serving
            assert (await c.identity.probe(csi.ProbeRequest())).ready
    finally:
        first.cleanup()
    third = lvm_driver(tmp_path / "third", lvm_vg, thin=True)  # kill -9 released the PVs
    third.start(timeout=120)
    third.cleanup()


@pytest.mark.parametrize("kind", ["thick", "thin"])
async def test_an_lv_grown_online_is_healthy_and_an_unchanged_one_too(tmp_path: Path, lvm_vg: VolumeGroup,
                                                                     kind: str) -> None:
    driver = lvm_driver(tmp_path / "driver", lvm_vg, thin=True)
    driver.start(timeout=120)
    try:
        async with connect(driver.socket_path) as c:
            vol = LvmLifecycle(c, driver, f"pvc-health-{kind}", mount_cap("ext4"), 64 * MIB, kind)
            await vol.up()
            assert not any(cond.abnormal for cond in await everywhere(c, vol.volume_id, vol.target))
            assert await vol.expand(128 * MIB) == 128 * MIB  # ext4 grows online here (CAP_SYS_RESOURCE)
            for cond in await everywhere(c, vol.volume_id, vol.target):
                assert not cond.abnormal, cond
            await vol.down()
        assert_no_leaks(driver)
    finally:
        driver.cleanup()
