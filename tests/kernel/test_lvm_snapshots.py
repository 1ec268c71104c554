"""LVM thin snapshots, restores and clones over gRPC (kernel lane: real thin pool, device-mapper).

A snapshot is a thin snapshot of a thin volume; a restored volume a thin
snapshot of the snapshot; a clone a thin snapshot of the volume. The tests
write while snapshotting, read the copies back through stage and publish, and
delete in every order, leaving no LV behind.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest
from grpclib.const import Status

from backends.lvm.backend import PARAM_TYPE
from csi.gen.csi import v1 as csi
from e2e.leaks import volume_lvs
from tests.kernel.lvmdriver import lvm_driver
from tests.kernel.lvmtools import VolumeGroup
from tests.lifecycle import (
    PAYLOAD,
    Lifecycle,
    Restored,
    copy_while_written,
    delete_all_snapshots,
    expect,
    five_snapshots_of_two_volumes,
    from_snapshot,
    from_volume,
    offered,
)
from tests.support import MIB, DriverProcess, assert_no_leaks, connect, create_request, mount_cap

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(600)]
RPC = csi.ControllerServiceCapabilityRpcType


@contextlib.contextmanager
def running(tmp_path_factory: pytest.TempPathFactory, vg: VolumeGroup, *, thin: bool) -> Iterator[DriverProcess]:
    with lvm_driver(tmp_path_factory.mktemp("lvm-snap"), vg, thin=thin).running(timeout=120) as proc:
        yield proc


@pytest.fixture
def driver(tmp_path_factory: pytest.TempPathFactory, lvm_vg: VolumeGroup) -> Iterator[DriverProcess]:
    with running(tmp_path_factory, lvm_vg, thin=True) as proc:
        yield proc


@pytest.mark.parametrize("kind", ["snapshot", "clone"])
async def test_copy_of_a_published_volume_being_written_holds_exactly_its_data(
        driver: DriverProcess, lvm_vg: VolumeGroup, kind: str) -> None:
    async with connect(driver.socket_path) as c:
        await copy_while_written(c, driver, kind)
        if kind == "snapshot":
            (snap,) = (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries
            assert snap.snapshot is not None
            lv = volume_lvs(lvm_vg.name)[snap.snapshot.snapshot_id]
            assert lv["lv_attr"][0] == "V" and lv["lv_attr"][9] == "k", "a thin snapshot, skipped on activation"
            assert "localcsi.dev/snapshot-name=snap-live" in lv["lv_tags"].split(",")
        await delete_all_snapshots(c)
    assert_no_leaks(driver)


async def test_restore_into_a_larger_volume_grows_its_filesystem(driver: DriverProcess, lvm_vg: VolumeGroup) -> None:
    async with connect(driver.socket_path) as c:
        source = Lifecycle(c, driver, "pvc-small", mount_cap("ext4"), 64 * MIB)
        await source.up()
        source.write()
        snap = (await c.controller.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-small", source_volume_id=source.volume_id))).snapshot
        assert snap is not None and snap.size_bytes == 64 * MIB and snap.ready_to_use
        source.write(PAYLOAD[::-1])
        await expect(Status.OUT_OF_RANGE, c.controller.create_volume(csi.CreateVolumeRequest(
            name="pvc-too-small", capacity_range=csi.CapacityRange(required_bytes=32 * MIB),
            volume_capabilities=[mount_cap()], volume_content_source=from_snapshot(snap.snapshot_id))))
        await expect(Status.INVALID_ARGUMENT, c.controller.create_volume(csi.CreateVolumeRequest(
            name="pvc-thick-restore", capacity_range=csi.CapacityRange(required_bytes=64 * MIB),
            volume_capabilities=[mount_cap()], parameters={PARAM_TYPE: "thick"},
            volume_content_source=from_snapshot(snap.snapshot_id))))
        big = Restored(c, driver, "pvc-big", from_snapshot(snap.snapshot_id), 256 * MIB)
        created = await big.create()
        assert created.capacity_bytes == 256 * MIB
        assert int(volume_lvs(lvm_vg.name)[big.volume_id]["lv_size"]) == 256 * MIB
        await big.stage(await big.attach())
        await big.publish()
        assert big.read() == PAYLOAD  # as at the snapshot, not the later write
        stats = await c.node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
            volume_id=big.volume_id, volume_path=str(big.target)))
        assert stats.usage[0].total > 200 * MIB, "the filesystem was grown to the larger volume at stage"
        await big.down()
        await source.down()
        await delete_all_snapshots(c)
    assert_no_leaks(driver)


async def test_volume_snapshot_and_restore_delete_in_every_order(driver: DriverProcess,
                                                                 lvm_vg: VolumeGroup) -> None:
    async with connect(driver.socket_path) as c:
        ctl = c.controller
        for n, order in enumerate(itertools.permutations(("volume", "snapshot", "restored"))):
            vol = (await ctl.create_volume(create_request(f"pvc-order-{n}", 16 * MIB))).volume
            assert vol is not None
            snap = (await ctl.create_snapshot(csi.CreateSnapshotRequest(
                name=f"snap-order-{n}", source_volume_id=vol.volume_id))).snapshot
            assert snap is not None
            request = create_request(f"pvc-order-{n}-restored", 16 * MIB)
            request.volume_content_source = from_snapshot(snap.snapshot_id)
            restored = (await ctl.create_volume(request)).volume
            assert restored is not None and restored.content_source == request.volume_content_source
            ids = {"volume": vol.volume_id, "snapshot": snap.snapshot_id, "restored": restored.volume_id}
            for what in order:
                if what == "snapshot":
                    await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=ids[what]))
                else:
                    await ctl.delete_volume(csi.DeleteVolumeRequest(volume_id=ids[what]))
                assert ids[what] not in volume_lvs(lvm_vg.name), f"{what} still there ({order})"
            assert_no_leaks(driver, str(order))


async def test_snapshots_list_page_and_survive_a_restart(driver: DriverProcess, lvm_vg: VolumeGroup) -> None:
    async with connect(driver.socket_path) as c:
        assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME} <= await offered(c)
        ids, made = await five_snapshots_of_two_volumes(c, 8 * MIB)
        again = await c.controller.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-list-0", source_volume_id=ids[0]))
        assert again.snapshot in made.values()
        await expect(Status.ALREADY_EXISTS, c.controller.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-list-0", source_volume_id=ids[1])))
        thick = (await c.controller.create_volume(create_request("pvc-thick-src", 8 * MIB, mount_cap(),
                                                                 {PARAM_TYPE: "thick"}))).volume
        assert thick is not None
        await expect(Status.INVALID_ARGUMENT, c.controller.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-of-thick", source_volume_id=thick.volume_id)))
        clone = create_request("pvc-thick-clone", 8 * MIB)
        clone.volume_content_source = from_volume(thick.volume_id)
        await expect(Status.INVALID_ARGUMENT, c.controller.create_volume(clone))
    driver.kill9()
    driver.start(timeout=120)
    async with connect(driver.socket_path) as c:
        seen: list[str] = []
        token, pages = "", 0
        while True:
            page = await c.controller.list_snapshots(csi.ListSnapshotsRequest(max_entries=2, starting_token=token))
            seen += [e.snapshot.snapshot_id for e in page.entries if e.snapshot]
            pages, token = pages + 1, page.next_token
            if not token:
                break
        assert (pages, seen) == (3, sorted(made))
        for snapshot_id, snap in made.items():
            got = (await c.controller.get_snapshot(csi.GetSnapshotRequest(snapshot_id=snapshot_id))).snapshot
            assert got == snap, "a restarted driver describes each snapshot as it was created"
        by_source = await c.controller.list_snapshots(csi.ListSnapshotsRequest(source_volume_id=ids[1]))
        assert len(by_source.entries) == 2
        await delete_all_snapshots(c)
        for volume_id in (*ids, thick.volume_id):
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    assert_no_leaks(driver)


async def test_without_a_thin_pool_snapshots_are_not_offered(tmp_path_factory: pytest.TempPathFactory,
                                                             lvm_vg: VolumeGroup) -> None:
    with running(tmp_path_factory, lvm_vg, thin=False) as proc:
        async with connect(proc.socket_path) as c:
            advertised = await offered(c)
            assert RPC.CREATE_DELETE_SNAPSHOT not in advertised and RPC.CLONE_VOLUME not in advertised
