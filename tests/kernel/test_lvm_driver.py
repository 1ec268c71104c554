"""The lvm driver end to end over gRPC (kernel lane: real LVM, device-mapper, ext4 online resize).

Each test runs ``python -m csi.cli serve --backend lvm`` on the session's volume
group and talks to it as the sidecars and kubelet do; afterwards no LV, no
device-mapper device and no mount may be left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from backends.lvm.backend import PARAM_TYPE
from csi.gen.csi import v1 as csi
from e2e.leaks import dm_devices, volume_lvs
from tests.kernel.lvmdriver import lvm_driver
from tests.kernel.lvmtools import VolumeGroup, sh
from tests.lifecycle import PAYLOAD, Lifecycle, expect
from tests.support import MIB, Client, DriverProcess, assert_no_leaks, connect, create_request, mount_cap

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(600)]


class LvmLifecycle(Lifecycle):
    """One volume's calls, created with the lvm provisioning type."""

    def __init__(self, client: Client, driver: DriverProcess, name: str, cap: csi.VolumeCapability,
                 size: int, kind: str) -> None:
        super().__init__(client, driver, name, cap, size)
        self.kind = kind

    async def create(self) -> csi.Volume:
        request = create_request(self.name, self.size, self.cap, {PARAM_TYPE: self.kind})
        resp = await self.c.controller.create_volume(request)
        assert resp.volume is not None
        self.volume_id = resp.volume.volume_id
        return resp.volume

    async def expand(self, size: int) -> int:
        ctl = await self.c.controller.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=self.volume_id, capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capability=self.cap))
        assert ctl.node_expansion_required is True
        node = await self.c.node.node_expand_volume(csi.NodeExpandVolumeRequest(
            volume_id=self.volume_id, volume_path=str(self.target), staging_target_path=str(self.staging),
            capacity_range=csi.CapacityRange(required_bytes=size), volume_capability=self.cap))
        return node.capacity_bytes


@contextlib.contextmanager
def running_driver(tmp_path_factory: pytest.TempPathFactory, vg: VolumeGroup, thin: bool,
                   overprovision: float = 1.0) -> Iterator[DriverProcess]:
    proc = lvm_driver(tmp_path_factory.mktemp("lvm-driver"), vg, thin=thin, overprovision=overprovision)
    with proc.running(timeout=120):
        yield proc


@pytest.fixture
def driver(tmp_path_factory: pytest.TempPathFactory, lvm_vg: VolumeGroup) -> Iterator[DriverProcess]:
    """The driver with the thin pool: thick and thin volumes by parameter."""
    with running_driver(tmp_path_factory, lvm_vg, thin=True) as proc:
        yield proc


def statvfs_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


async def test_thick_and_thin_volumes_are_lvs_and_go_away_on_delete(driver: DriverProcess,
                                                                    lvm_vg: VolumeGroup) -> None:
    async with connect(driver.socket_path) as c:
        made = {}
        for kind in ("thick", "thin"):
            resp = await c.controller.create_volume(
                create_request(f"pvc-{kind}", 10 * MIB + 1, mount_cap(), {PARAM_TYPE: kind}))
            assert resp.volume is not None
            assert resp.volume.capacity_bytes == 12 * MIB  # whole 4 MiB extents
            assert resp.volume.volume_context["localcsi.dev/provisioning"] == kind
            made[kind] = resp.volume.volume_id
        lvs = volume_lvs(lvm_vg.name)
        assert lvs[made["thick"]]["lv_attr"][0] == "-" and lvs[made["thin"]]["lv_attr"][0] == "V"
        assert lvs[made["thin"]]["pool_lv"] == lvm_vg.thinpool
        assert "localcsi.dev/name=pvc-thick" in lvs[made["thick"]]["lv_tags"].split(",")
        assert dm_devices(lvm_vg.name) == [], "created volumes stay inactive until staged"

        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        assert sorted(e.volume.volume_id for e in listed.entries if e.volume) == sorted(made.values())
        await expect(Status.INVALID_ARGUMENT, c.controller.create_volume(
            create_request("pvc-bad", 8 * MIB, mount_cap(), {PARAM_TYPE: "striped"})))
        for volume_id in made.values():
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))  # gone: still OK
    assert_no_leaks(driver)


@pytest.mark.parametrize(("fs_type", "kind"), [("ext4", "thin"), ("xfs", "thick"), ("ext4", "thick")])
async def test_filesystem_survives_restage_and_grows_online(driver: DriverProcess, lvm_vg: VolumeGroup,
                                                            fs_type: str, kind: str) -> None:
    async with connect(driver.socket_path) as c:
        vol = LvmLifecycle(c, driver, f"pvc-{fs_type}-{kind}", mount_cap(fs_type), 320 * MIB, kind)
        await vol.up()
        vol.write()
        await vol.unpublish()
        await vol.unstage()
        assert dm_devices(lvm_vg.name) == [], "unstage deactivates the LV"
        await vol.stage(await vol.attach())
        await vol.publish()
        assert vol.read() == PAYLOAD

        before = statvfs_bytes(vol.target)
        assert await vol.expand(640 * MIB) == 640 * MIB  # online: still published and mounted
        assert statvfs_bytes(vol.target) > 1.8 * before
        assert vol.read() == PAYLOAD
        assert int(volume_lvs(lvm_vg.name)[vol.volume_id]["lv_size"]) == 640 * MIB
        vol.write(PAYLOAD[::-1])
        await vol.down()
    assert_no_leaks(driver)


async def capacity(c: Client, kind: str) -> int:
    resp = await c.controller.get_capacity(csi.GetCapacityRequest(
        volume_capabilities=[mount_cap()], parameters={PARAM_TYPE: kind}))
    return resp.available_capacity


def pool_bytes(vg: VolumeGroup) -> int:
    out = sh("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size", f"{vg.name}/{vg.thinpool}")
    return int(out.strip())


def vg_free_bytes(vg: VolumeGroup) -> int:
    return int(sh("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", vg.name).strip())


async def test_thin_capacity_is_overprovisioned_and_thick_is_free_space(
        tmp_path_factory: pytest.TempPathFactory, lvm_vg: VolumeGroup) -> None:
    with running_driver(tmp_path_factory, lvm_vg, thin=True, overprovision=2.5) as proc:
        pool = pool_bytes(lvm_vg)
        async with connect(proc.socket_path) as c:
            assert await capacity(c, "thin") == int(pool * 2.5) // (4 * MIB) * 4 * MIB
            assert await capacity(c, "thick") == vg_free_bytes(lvm_vg)
            # A thin volume larger than the whole pool: allowed by the ratio, costs the VG nothing yet.
            big = await c.controller.create_volume(
                create_request("pvc-over", pool + 64 * MIB, mount_cap(), {PARAM_TYPE: "thin"}))
            assert big.volume is not None
            left = await capacity(c, "thin")
            assert left == int(pool * 2.5) // (4 * MIB) * 4 * MIB - big.volume.capacity_bytes
            await expect(Status.RESOURCE_EXHAUSTED, c.controller.create_volume(
                create_request("pvc-too-much", left + 4 * MIB, mount_cap(), {PARAM_TYPE: "thin"})))
            thick_before = await capacity(c, "thick")
            thick = await c.controller.create_volume(
                create_request("pvc-thick-cap", 100 * MIB, mount_cap(), {PARAM_TYPE: "thick"}))
            assert thick.volume is not None
            assert await capacity(c, "thick") == thick_before - thick.volume.capacity_bytes
            assert await capacity(c, "thin") == left, "thick volumes do not touch the pool's budget"
            for resp in (big, thick):
                assert resp.volume is not None
                await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=resp.volume.volume_id))
            assert await capacity(c, "thin") == int(pool * 2.5) // (4 * MIB) * 4 * MIB
        assert_no_leaks(proc)


async def test_a_killed_driver_finds_every_volume_from_lvm_alone(driver: DriverProcess,
                                                                 lvm_vg: VolumeGroup) -> None:
    async with connect(driver.socket_path) as c:
        staged = LvmLifecycle(c, driver, "pvc-staged", mount_cap("ext4"), 64 * MIB, "thin")
        await staged.up()
        staged.write()
        idle = LvmLifecycle(c, driver, "pvc-idle", mount_cap("ext4"), 32 * MIB, "thick")
        await idle.create()
    driver.kill9()
    driver.start(timeout=120)
    async with connect(driver.socket_path) as c:
        staged.c = idle.c = c
        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        found = {e.volume.volume_id: e for e in listed.entries if e.volume}
        assert set(found) == {staged.volume_id, idle.volume_id}
        assert found[staged.volume_id].volume.capacity_bytes == 64 * MIB  # type: ignore[union-attr]
        assert found[staged.volume_id].status.published_node_ids == [driver.node_id]  # type: ignore[union-attr]
        assert found[idle.volume_id].status.published_node_ids == []  # type: ignore[union-attr]
        # Retries of the calls the dead driver answered are no-ops, and the data is there.
        await staged.stage()
        await staged.publish()
        assert staged.read() == PAYLOAD
        await staged.down()
        await idle.delete()
    assert_no_leaks(driver)
