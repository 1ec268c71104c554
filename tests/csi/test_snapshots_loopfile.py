"""Snapshots and clones through the CSI API: a real driver process, real loop devices, mounts and writers.

The image directory is the test's own: the default one on the host's ext4
(sparse copies), or a loop-mounted xfs with ``reflink=1`` (copy-on-write clones).
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from tests.csi.test_driver_loopfile import PAYLOAD, Lifecycle, assert_no_leaks, expect
from tests.support import MIB, Client, DriverProcess, connect, create_request, force_cleanup, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
RPC = csi.ControllerServiceCapabilityRpcType
RECORD = 4096
MAX_RECORDS = 16384  # 64 MiB of records in a 128 MiB volume


@pytest.fixture(params=["ext4-dir", "xfs-reflink-dir"])
def snap_driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    proc = DriverProcess(tmp_path_factory.mktemp("snapdriver"))
    fs_image = proc.root / "xfs.img"
    if request.param == "xfs-reflink-dir":
        with fs_image.open("wb") as handle:
            handle.truncate(2 << 30)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(fs_image)], check=True)
        proc.data_dir.mkdir()
        subprocess.run(["mount", "-o", "loop", str(fs_image), str(proc.data_dir)], check=True)
    try:
        proc.start()
        yield proc
    finally:
        proc.kill9()
        force_cleanup(proc.kubelet_dir, proc.data_dir)
        if fs_image.exists():
            subprocess.run(["umount", str(proc.data_dir)], check=False)
            fs_image.unlink()


class Restored(Lifecycle):
    """A volume whose CreateVolume names a content source."""

    def __init__(self, client: Client, driver: DriverProcess, name: str, source: csi.VolumeContentSource,
                 size: int = 128 * MIB, fs_type: str = "ext4") -> None:
        super().__init__(client, driver, name, mount_cap(fs_type), size)
        self.source = source

    async def create(self) -> csi.Volume:
        request = create_request(self.name, self.size, self.cap)
        request.volume_content_source = self.source
        resp = await self.c.controller.create_volume(request)
        assert resp.volume is not None
        self.volume_id = resp.volume.volume_id
        return resp.volume


def restore(name: str, source: csi.VolumeContentSource, size: int = 0, limit: int = 0) -> csi.CreateVolumeRequest:
    """CreateVolume from ``source`` with a capacity range of ``size`` .. ``limit`` bytes."""
    request = create_request(name, size)
    request.capacity_range = csi.CapacityRange(required_bytes=size, limit_bytes=limit)
    request.volume_content_source = source
    return request


def from_snapshot(snapshot_id: str) -> csi.VolumeContentSource:
    return csi.VolumeContentSource(snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot_id))


def from_volume(volume_id: str) -> csi.VolumeContentSource:
    return csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=volume_id))


class Writer:
    """Appends numbered 4 KiB records to a file on the volume, counting the writes that returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def record(i: int) -> bytes:
        return struct.pack("=Q", i) * (RECORD // 8)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            while not self._stop.is_set() and self.done < MAX_RECORDS:
                os.pwrite(fd, self.record(self.done), self.done * RECORD)
                self.done += 1
                time.sleep(0.0005)
        finally:
            os.close(fd)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.done < count:
            assert time.monotonic() < deadline, f"writer stuck at {self.done} records (filesystem left frozen?)"
            time.sleep(0.01)


def records_in(path: Path) -> int:
    """How many records the copy holds; every one must be whole and in order (no torn or missing write)."""
    data = path.read_bytes()
    assert len(data) % RECORD == 0, f"torn record: file is {len(data)} bytes"
    count = len(data) // RECORD
    for i in range(count):
        assert data[i * RECORD:(i + 1) * RECORD] == Writer.record(i), f"record {i} differs"
    return count


async def delete_in_order(c: Client, ids: dict[str, str], order: tuple[str, ...]) -> None:
    """Delete what ``ids`` names ("snapshot", else a volume), in ``order``: every order must work."""
    for what in order:
        if what == "snapshot":
            await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=ids[what]))
        else:
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=ids[what]))


async def check_copy_of_the_instant(copy: Restored, before: int, after: int) -> None:
    """Use ``copy`` and check it holds exactly what was there at the instant of the copy: the earlier file, and
    every record written before the request, whole and in order, none torn; the writes after the response are
    not there. Then take it down."""
    await copy.stage(await copy.attach())
    await copy.publish()
    assert copy.read() == PAYLOAD
    count = records_in(copy.target / "log.bin")
    assert before <= count <= after, (before, count, after)
    await copy.down()


async def copy_while_written(c: Client, driver: DriverProcess, kind: str, fs_type: str = "ext4") -> None:
    size = 320 * MIB if fs_type == "xfs" else 128 * MIB  # mkfs.xfs needs 300 MiB
    source = Lifecycle(c, driver, f"pvc-live-{kind}", mount_cap(fs_type), size)
    await source.up()
    source.write()
    with Writer(source.target / "log.bin") as writer:
        writer.wait_for(200)
        before = writer.done
        if kind == "snapshot":
            resp = await c.controller.create_snapshot(csi.CreateSnapshotRequest(
                name="snap-live", source_volume_id=source.volume_id))
            assert resp.snapshot is not None and resp.snapshot.ready_to_use
            copy = Restored(c, driver, "pvc-restored-live", from_snapshot(resp.snapshot.snapshot_id), size, fs_type)
        else:
            copy = Restored(c, driver, "pvc-clone-live", from_volume(source.volume_id), size, fs_type)
            await copy.create()
        after = writer.done
        writer.wait_for(after + 50)  # the source was thawed: writes go on
    created = await copy.create()
    assert created.content_source == copy.source
    # The copy is mounted on the same node while its source still is (a local volume never moves): for xfs
    # that means two filesystems with one UUID.
    await check_copy_of_the_instant(copy, before, after)
    await source.down()


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
@pytest.mark.parametrize("kind", ["snapshot", "clone"])
async def test_copy_of_a_published_volume_being_written(snap_driver: DriverProcess, kind: str, fs_type: str) -> None:
    async with connect(snap_driver.socket_path) as c:
        await copy_while_written(c, snap_driver, kind, fs_type)
        for entry in (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries:
            assert entry.snapshot is not None
            await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=entry.snapshot.snapshot_id))
    assert_no_leaks(snap_driver)
    assert snap_driver.images() == []
    assert list((snap_driver.data_dir / "snapshots").iterdir()) == []


async def test_capabilities_list_paging_and_filters(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        caps = await c.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
        offered = {cap.rpc.type for cap in caps.capabilities if cap.rpc}
        assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME} <= offered
        vols = [(await c.controller.create_volume(create_request(f"pvc-list-{i}", 32 * MIB))).volume for i in range(2)]
        ids = [v.volume_id for v in vols if v]
        made = {}
        for i in range(5):
            resp = await c.controller.create_snapshot(csi.CreateSnapshotRequest(
                name=f"snap-list-{i}", source_volume_id=ids[i % 2]))
            assert resp.snapshot is not None
            made[resp.snapshot.snapshot_id] = resp.snapshot
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
            await delete_in_order(c, ids, order)
        assert (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries == []
        assert (await c.controller.list_volumes(csi.ListVolumesRequest())).entries == []
    assert driver.images() == []
    assert list((driver.data_dir / "snapshots").iterdir()) == []
    assert_no_leaks(driver)
