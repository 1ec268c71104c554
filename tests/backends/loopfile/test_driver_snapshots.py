"""Snapshots and clones through the CSI API: a real driver process, real loop devices, mounts and writers.

The image directory is the test's own: the default one on the host's ext4
(sparse copies), or a loop-mounted xfs with ``reflink=1`` (copy-on-write clones).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from tests import lifecycle
from tests.filesystems import driver_on_filesystem
from tests.lifecycle import expect, from_snapshot, from_volume, restore
from tests.support import MIB, DriverProcess, assert_no_leaks, connect, create_request

pytestmark = [pytest.mark.anyio, pytest.mark.root]
RPC = csi.ControllerServiceCapabilityRpcType


@pytest.fixture(params=["ext4-dir", "xfs-reflink-dir"])
def snap_driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    """A driver whose images live in the test's directory, or on an xfs of its own (snapshots are reflinks)."""
    proc = DriverProcess(tmp_path_factory.mktemp("snapdriver"))
    if request.param == "xfs-reflink-dir":
        with driver_on_filesystem(proc, "xfs", 2 << 30) as started:
            yield started
    else:
        with proc.running() as started:
            yield started


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
@pytest.mark.parametrize("kind", ["snapshot", "clone"])
async def test_copy_of_a_published_volume_being_written(snap_driver: DriverProcess, kind: str, fs_type: str) -> None:
    async with connect(snap_driver.socket_path) as c:
        await lifecycle.copy_while_written(c, snap_driver, kind, fs_type)
        await lifecycle.delete_all_snapshots(c)
    assert_no_leaks(snap_driver)
    assert snap_driver.images() == []
    assert list((snap_driver.data_dir / "snapshots").iterdir()) == []


async def test_capabilities_list_paging_and_filters(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        offered = await lifecycle.offered(c)
        assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME} <= offered
        ids, made = await lifecycle.five_snapshots_of_two_volumes(c, 32 * MIB)
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await c.controller.list_snapshots(csi.ListSnapshotsRequest(max_entries=2, starting_token=token))
            assert len(page.entries) <= 2
            seen += [e.snapshot.snapshot_id for e in page.entries if e.snapshot]
            pages += 1
            token = page.next_token
            if not token:
                break
        assert (pages, seen) == (3, sorted(made))
        one = sorted(made)[3]
        only = await c.controller.list_snapshots(csi.ListSnapshotsRequest(snapshot_id=one))
        assert [e.snapshot.snapshot_id for e in only.entries if e.snapshot] == [one]
        by_source = await c.controller.list_snapshots(csi.ListSnapshotsRequest(source_volume_id=ids[1]))
        assert sorted(e.snapshot.snapshot_id for e in by_source.entries if e.snapshot) == sorted(
            s for s, snap in made.items() if snap.source_volume_id == ids[1])
        assert len(by_source.entries) == 2
        none = await c.controller.list_snapshots(csi.ListSnapshotsRequest(snapshot_id="lcs-" + "0" * 32))
        assert none.entries == []
        got = await c.controller.get_snapshot(csi.GetSnapshotRequest(snapshot_id=one))
        assert got.snapshot is not None
        assert (got.snapshot.source_volume_id, got.snapshot.size_bytes) == (made[one].source_volume_id, 32 * MIB)
        assert got.snapshot.creation_time == made[one].creation_time
        await expect(Status.ABORTED, c.controller.list_snapshots(csi.ListSnapshotsRequest(starting_token="bogus")))


async def test_spec_error_codes_and_idempotency(driver: DriverProcess) -> None:
    missing_volume, missing_snapshot = "lcv-" + "0" * 32, "lcs-" + "0" * 32
    async with connect(driver.socket_path) as c:
        ctl = c.controller
        a = (await ctl.create_volume(create_request("pvc-codes-a", 64 * MIB))).volume
        b = (await ctl.create_volume(create_request("pvc-codes-b", 64 * MIB))).volume
        assert a is not None and b is not None
        first = await ctl.create_snapshot(csi.CreateSnapshotRequest(name="snap-codes", source_volume_id=a.volume_id))
        again = await ctl.create_snapshot(csi.CreateSnapshotRequest(name="snap-codes", source_volume_id=a.volume_id))
        assert first.snapshot == again.snapshot and first.snapshot is not None
        snap_id = first.snapshot.snapshot_id
        await expect(Status.ALREADY_EXISTS, ctl.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-codes", source_volume_id=b.volume_id)))
        await expect(Status.NOT_FOUND, ctl.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-nowhere", source_volume_id=missing_volume)))
        await expect(Status.INVALID_ARGUMENT, ctl.create_snapshot(csi.CreateSnapshotRequest(
            source_volume_id=a.volume_id)))
        await expect(Status.INVALID_ARGUMENT, ctl.create_snapshot(csi.CreateSnapshotRequest(name="snap-x")))
        await expect(Status.INVALID_ARGUMENT, ctl.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-param", source_volume_id=a.volume_id, parameters={"bogus": "1"})))
        await expect(Status.NOT_FOUND, ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=missing_snapshot)))

        await expect(Status.NOT_FOUND, ctl.create_volume(restore("pvc-r1", from_snapshot(missing_snapshot), 64 * MIB)))
        await expect(Status.NOT_FOUND, ctl.create_volume(restore("pvc-r2", from_volume(missing_volume), 64 * MIB)))
        await expect(Status.OUT_OF_RANGE, ctl.create_volume(restore("pvc-r3", from_snapshot(snap_id), 32 * MIB)))
        await expect(Status.OUT_OF_RANGE, ctl.create_volume(restore("pvc-r4", from_volume(a.volume_id), 32 * MIB)))
        restored = await ctl.create_volume(restore("pvc-r5", from_snapshot(snap_id), 96 * MIB))
        assert restored.volume is not None and restored.volume.capacity_bytes == 96 * MIB
        assert restored.volume.content_source == from_snapshot(snap_id)
        await expect(Status.ALREADY_EXISTS, ctl.create_volume(restore("pvc-r5", from_volume(a.volume_id), 96 * MIB)))
        await expect(Status.ALREADY_EXISTS, ctl.create_volume(create_request("pvc-r5", 96 * MIB)))
        for _ in range(2):
            await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snap_id))
        await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=missing_snapshot))
        await expect(Status.INVALID_ARGUMENT, ctl.delete_snapshot(csi.DeleteSnapshotRequest()))


async def test_delete_in_every_order_across_a_restart(driver: DriverProcess) -> None:
    orders = [("volume", "snapshot", "restored"), ("volume", "restored", "snapshot"),
              ("snapshot", "volume", "restored"), ("snapshot", "restored", "volume"),
              ("restored", "volume", "snapshot"), ("restored", "snapshot", "volume")]
    made: list[dict[str, str]] = []
    async with connect(driver.socket_path) as c:
        for n in range(len(orders)):
            vol = (await c.controller.create_volume(create_request(f"pvc-order-{n}", 32 * MIB))).volume
            assert vol is not None
            snap = (await c.controller.create_snapshot(csi.CreateSnapshotRequest(
                name=f"snap-order-{n}", source_volume_id=vol.volume_id))).snapshot
            assert snap is not None
            made.append({"volume": vol.volume_id, "snapshot": snap.snapshot_id})
    driver.restart()  # snapshots are on disk, not in memory
    async with connect(driver.socket_path) as c:
        listed = await c.controller.list_snapshots(csi.ListSnapshotsRequest())
        assert sorted(e.snapshot.snapshot_id for e in listed.entries if e.snapshot) == sorted(
            m["snapshot"] for m in made)
        for n, ids in enumerate(made):
            request = create_request(f"pvc-restored-{n}", 32 * MIB)
            request.volume_content_source = from_snapshot(ids["snapshot"])
            restored = (await c.controller.create_volume(request)).volume
            assert restored is not None
            ids["restored"] = restored.volume_id
        for ids, order in zip(made, orders, strict=True):
            await lifecycle.delete_in_order(c, ids, order)
        assert (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries == []
        assert (await c.controller.list_volumes(csi.ListVolumesRequest())).entries == []
    assert driver.images() == []
    assert list((driver.data_dir / "snapshots").iterdir()) == []
    assert_no_leaks(driver)
