"""rawdisk snapshots, restores and clones through the CSI API: a real driver process over its socket.

Disks are loop devices reachable only through this test's own symlinks
(tests/backends/rawdisk/support.py); snapshots go to a directory of the
test's own (``--rawdisk-snapshot-dir``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from backends.rawdisk.options import RawdiskOptions
from csi.cli.main import build_parser
from csi.gen.csi import v1 as csi
from e2e import leaks
from tests import lifecycle
from tests.backends.rawdisk.support import MIB, FakeDisks, disk_states, fake_disks, rawdisk_driver, running_driver, sh
from tests.lifecycle import Lifecycle, expect, from_snapshot, from_volume, restore, snapshot
from tests.support import DriverProcess, assert_no_leaks, connect, create_request, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
RPC = csi.ControllerServiceCapabilityRpcType
DISK_BYTES = 160 * MIB
VOLUME_BYTES = DISK_BYTES - 2 * MIB  # the partition: the disk less the GPT and 1 MiB alignment


disks = pytest.fixture(fake_disks, name="disks")


@pytest.fixture
def driver(disks: FakeDisks) -> Iterator[DriverProcess]:
    yield from running_driver(disks, snapshots=True)


def assert_nothing_left(disks: FakeDisks, driver: DriverProcess) -> None:
    """No mount, no partition view, no claim, no snapshot file, and every disk free again."""
    assert_no_leaks(driver)
    assert list((disks.root / "snapshots").iterdir()) == []
    states = disk_states([disks.pattern])
    assert {d["state"] for d in states.values()} == {"free"}, states


async def test_capabilities_follow_the_snapshot_dir(disks: FakeDisks) -> None:
    disks.add("a", 64 * MIB)
    plain = rawdisk_driver(disks)
    try:
        plain.start()
        async with connect(plain.socket_path) as c:
            rpcs = await lifecycle.offered(c)
            assert RPC.CLONE_VOLUME in rpcs
            assert not rpcs & {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT}
            volume = (await c.controller.create_volume(create_request("pvc-a", 32 * MIB))).volume
            assert volume is not None
            await expect(Status.UNIMPLEMENTED, c.controller.create_snapshot(csi.CreateSnapshotRequest(
                name="snap", source_volume_id=volume.volume_id)))
        plain.stop()
        with_dir = rawdisk_driver(disks, snapshots=True)
        with_dir.start()
        try:
            async with connect(with_dir.socket_path) as c:
                assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT,
                        RPC.CLONE_VOLUME} <= await lifecycle.offered(c)
        finally:
            with_dir.kill9()
    finally:
        plain.kill9()


@pytest.mark.parametrize("kind", ["snapshot", "clone"])
async def test_copy_of_a_published_volume_being_written(disks: FakeDisks, driver: DriverProcess, kind: str) -> None:
    for name in ("a", "b"):
        disks.add(name, DISK_BYTES)
    driver.start()
    async with connect(driver.socket_path) as c:
        source = Lifecycle(c, driver, "pvc-live", mount_cap("ext4"), 128 * MIB)
        await source.up()
        source.write()
        copy, before, after, snap = await lifecycle.copy_under_writes(c, driver, source, kind, VOLUME_BYTES)
        assert snap is None or snap.size_bytes == VOLUME_BYTES
        await source.down()  # the source is gone before the copy is even looked at
    if kind == "snapshot":
        driver.restart()  # the snapshot is on disk, not in memory
    async with connect(driver.socket_path) as c:
        copy.c = c
        created = await copy.create()  # the restore (or, for a clone, the idempotent repeat)
        assert created.content_source == copy.source
        assert created.capacity_bytes == VOLUME_BYTES
        await lifecycle.check_copy_of_the_instant(copy, before, after)
        await lifecycle.delete_all_snapshots(c)
    assert_nothing_left(disks, driver)


async def test_list_paging_filters_and_error_codes(disks: FakeDisks, driver: DriverProcess) -> None:
    for name in ("a", "b", "c"):
        disks.add(name, 48 * MIB)
    disks.add("big", 64 * MIB)
    missing_volume, missing_snapshot = "lcv-" + "0" * 32, "lcs-" + "0" * 32
    driver.start()
    async with connect(driver.socket_path) as c:
        ctl = c.controller
        vols = [(await ctl.create_volume(create_request(f"pvc-{i}", 32 * MIB))).volume for i in range(2)]
        ids = [v.volume_id for v in vols if v is not None]
        made = {}
        for i in range(5):
            snap = await snapshot(c, f"snap-{i}", ids[i % 2])
            made[snap.snapshot_id] = snap
        again = await snapshot(c, "snap-0", ids[0])
        assert again == made[again.snapshot_id]  # same id, same creation time
        seen: list[str] = []
        token = ""
        while True:
            page = await ctl.list_snapshots(csi.ListSnapshotsRequest(max_entries=2, starting_token=token))
            assert len(page.entries) <= 2
            seen += [e.snapshot.snapshot_id for e in page.entries if e.snapshot]
            token = page.next_token
            if not token:
                break
        assert seen == sorted(made)
        by_source = await ctl.list_snapshots(csi.ListSnapshotsRequest(source_volume_id=ids[1]))
        assert len(by_source.entries) == 2
        one = sorted(made)[2]
        got = await ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=one))
        assert got.snapshot == made[one]
        await expect(Status.ALREADY_EXISTS, ctl.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-0", source_volume_id=ids[1])))
        await expect(Status.NOT_FOUND, ctl.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-nowhere", source_volume_id=missing_volume)))
        await expect(Status.NOT_FOUND, ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=missing_snapshot)))
        await expect(Status.ABORTED, ctl.list_snapshots(csi.ListSnapshotsRequest(starting_token="bogus")))

        await expect(Status.NOT_FOUND, ctl.create_volume(restore("pvc-r1", from_snapshot(missing_snapshot))))
        await expect(Status.NOT_FOUND, ctl.create_volume(restore("pvc-r2", from_volume(missing_volume))))
        await expect(Status.OUT_OF_RANGE, ctl.create_volume(restore("pvc-r3", from_snapshot(one), 32 * MIB)))
        await expect(Status.OUT_OF_RANGE, ctl.create_volume(restore("pvc-r4", from_volume(ids[0]), 0, 32 * MIB)))
        bigger = await ctl.create_volume(restore("pvc-r5", from_snapshot(one), 50 * MIB))
        assert bigger.volume is not None and bigger.volume.capacity_bytes == 62 * MIB  # only "big" fits
        await expect(Status.ALREADY_EXISTS, ctl.create_volume(restore("pvc-r5", from_volume(ids[0]), 50 * MIB)))
        await expect(Status.ALREADY_EXISTS, ctl.create_volume(create_request("pvc-r5", 50 * MIB)))
        filler = (await ctl.create_volume(create_request("pvc-filler", 32 * MIB))).volume
        assert filler is not None
        await expect(Status.RESOURCE_EXHAUSTED, ctl.create_volume(restore("pvc-r6", from_snapshot(one))))
        for volume_id in (bigger.volume.volume_id, filler.volume_id):
            await ctl.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
        for snap_id in made:
            await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snap_id))
        await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=missing_snapshot))
        for volume_id in ids:
            await ctl.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    assert_nothing_left(disks, driver)


async def test_delete_in_every_order_across_a_restart(disks: FakeDisks, driver: DriverProcess) -> None:
    orders = [("volume", "snapshot", "restored"), ("volume", "restored", "snapshot"),
              ("snapshot", "volume", "restored"), ("snapshot", "restored", "volume"),
              ("restored", "volume", "snapshot"), ("restored", "snapshot", "volume")]
    for n in range(6):
        disks.add(f"d{n}", 40 * MIB)
    driver.start()
    for order in orders:
        async with connect(driver.socket_path) as c:
            vol = (await c.controller.create_volume(create_request("pvc-order", 32 * MIB))).volume
            assert vol is not None
            snap = await snapshot(c, "snap-order", vol.volume_id)
        driver.restart()
        async with connect(driver.socket_path) as c:
            request = create_request("pvc-order-restored", 0)
            request.volume_content_source = from_snapshot(snap.snapshot_id)
            restored = (await c.controller.create_volume(request)).volume
            assert restored is not None
            ids = {"volume": vol.volume_id, "snapshot": snap.snapshot_id, "restored": restored.volume_id}
            await lifecycle.delete_in_order(c, ids, order)
            assert (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries == []
            assert (await c.controller.list_volumes(csi.ListVolumesRequest())).entries == []
        assert_nothing_left(disks, driver)


async def test_a_crash_in_the_middle_of_a_clone_leaves_no_volume(disks: FakeDisks, driver: DriverProcess,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        disks.add(name, 48 * MIB)
    monkeypatch.setenv("LOCALCSI_FAULT", "rawdisk.create.after_copy:kill")
    driver.start()
    async with connect(driver.socket_path) as c:
        source = (await c.controller.create_volume(create_request("pvc-src", 32 * MIB))).volume
        assert source is not None
        request = create_request("pvc-clone", 0)
        request.volume_content_source = from_volume(source.volume_id)
        with pytest.raises((GRPCError, StreamTerminatedError, OSError)):  # the driver dies under the call
            await c.controller.create_volume(request)
    assert driver.proc is not None and driver.proc.wait(10) == -9
    assert sorted(str(d["state"]) for d in disk_states([disks.pattern]).values()) == ["claimed", "claimed"]
    monkeypatch.delenv("LOCALCSI_FAULT")
    driver.start()  # finds the claim still "copying": wipes it, lists nothing
    async with connect(driver.socket_path) as c:
        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [source.volume_id]
        clone = (await c.controller.create_volume(request)).volume  # the CO's retry
        assert clone is not None and clone.content_source == from_volume(source.volume_id)
        for volume_id in (clone.volume_id, source.volume_id):
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    assert_nothing_left(disks, driver)


async def test_a_crash_while_frozen_is_thawed_at_restart(disks: FakeDisks, driver: DriverProcess,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    disks.add("a", 64 * MIB)
    monkeypatch.setenv("LOCALCSI_FAULT", "rawdisk.snapshot.after_freeze:kill")
    driver.start()
    try:
        async with connect(driver.socket_path) as c:
            source = Lifecycle(c, driver, "pvc-frozen", mount_cap("ext4"), 32 * MIB)
            await source.up()
            with pytest.raises((GRPCError, StreamTerminatedError, OSError)):  # the driver dies under the call
                await snapshot(c, "snap-frozen", source.volume_id)
        assert driver.proc is not None and driver.proc.wait(10) == -9
        monkeypatch.delenv("LOCALCSI_FAULT")
        driver.start()
        done = threading.Event()

        def write() -> None:
            (source.target / "after").write_bytes(b"thawed")
            os.sync()
            done.set()

        threading.Thread(target=write, daemon=True).start()
        assert done.wait(10), "the filesystem stayed frozen after the restart"
        assert list((disks.root / "snapshots").iterdir()) == []
        async with connect(driver.socket_path) as c:
            source.c = c
            assert (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries == []
            await source.down()
    finally:
        staging = driver.kubelet_dir / "plugins" / "pvc-frozen" / "globalmount"
        if str(staging) in leaks.mounts_under(driver.kubelet_dir):
            sh_quiet("fsfreeze", "-u", str(staging))
    assert_nothing_left(disks, driver)


def sh_quiet(*argv: str) -> None:
    with contextlib.suppress(AssertionError):
        sh(*argv)


def test_the_flag_its_environment_fallback_and_controller_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--backend", "rawdisk", "--rawdisk-snapshot-dir", "/srv/snaps"])
    assert RawdiskOptions.from_arguments(args).snapshot_dir == "/srv/snaps"
    monkeypatch.setenv("LOCALCSI_RAWDISK_SNAPSHOT_DIR", "/srv/from-env")
    args = build_parser().parse_args(["serve", "--backend", "rawdisk"])
    options = RawdiskOptions.from_arguments(args)
    assert options.snapshot_dir == "/srv/from-env"
    with_dir = options.features()  # what a controller-mode instance advertises from the same flags
    assert with_dir.snapshots and with_dir.clones and not with_dir.expansion
    assert not RawdiskOptions(snapshot_dir="").features().snapshots
