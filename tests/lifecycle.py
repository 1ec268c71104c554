"""Volumes driven through a real driver the way kubelet and the sidecars do, and copies checked for what they hold.

:class:`Lifecycle` makes one volume's calls (create, attach, stage, publish and back); :class:`Restored` is one
whose CreateVolume names a content source; :class:`Writer` appends numbered records while a copy is taken, and
:func:`check_copy_of_the_instant` proves the copy holds exactly what was written before the request. Every
backend's driver tests (tests/backends/*/, tests/kernel/) share them.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e.files import read_at, write_at, write_file
from tests.support import MIB, NODE_ID, Client, DriverProcess, create_request, mount_cap

PAYLOAD = os.urandom(256 * 1024)

RECORD = 4096
MAX_RECORDS = 16384  # 64 MiB of records in a 128 MiB volume


class Lifecycle:
    """Drives one volume through the calls kubelet and the sidecars make."""

    def __init__(self, client: Client, driver: DriverProcess, name: str, cap: csi.VolumeCapability,
                 size: int = 64 * MIB) -> None:
        self.c, self.driver, self.name, self.cap, self.size = client, driver, name, cap, size
        self.volume_id = ""
        self.staging = driver.kubelet_dir / "plugins" / name / "globalmount"
        self.target = driver.kubelet_dir / "pods" / name / "mount"
        self.block = cap.block is not None

    async def create(self) -> csi.Volume:
        resp = await self.c.controller.create_volume(create_request(self.name, self.size, self.cap))
        assert resp.volume is not None
        self.volume_id = resp.volume.volume_id
        return resp.volume

    async def attach(self) -> dict[str, str]:
        resp = await self.c.controller.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=self.volume_id, node_id=NODE_ID, volume_capability=self.cap))
        return dict(resp.publish_context)

    async def stage(self, context: dict[str, str] | None = None) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        await self.c.node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging), volume_capability=self.cap,
            publish_context=context or {}))

    async def publish(self, readonly: bool = False) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        await self.c.node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging), target_path=str(self.target),
            volume_capability=self.cap, readonly=readonly))

    async def unpublish(self) -> None:
        await self.c.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
            volume_id=self.volume_id, target_path=str(self.target)))

    async def unstage(self) -> None:
        await self.c.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging)))

    async def detach(self) -> None:
        await self.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
            volume_id=self.volume_id, node_id=NODE_ID))

    async def delete(self) -> None:
        await self.c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=self.volume_id))

    async def use(self) -> None:
        """What a pod's start makes happen: attach, stage, publish."""
        await self.stage(await self.attach())
        await self.publish()

    async def release(self) -> None:
        """What the pod's end makes happen: unpublish, unstage, detach."""
        await self.unpublish()
        await self.unstage()
        await self.detach()

    async def up(self) -> None:
        await self.create()
        await self.use()

    async def down(self) -> None:
        await self.release()
        await self.delete()

    def write(self, data: bytes = PAYLOAD) -> None:
        if self.block:
            write_at(self.target, 4096, data)
        else:
            write_file(self.target / "data.bin", data)

    def read(self, size: int = len(PAYLOAD)) -> bytes:
        if self.block:
            return read_at(self.target, 4096, size)
        return (self.target / "data.bin").read_bytes()


async def expect(status: Status, call: object) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await call  # type: ignore[misc]
    assert info.value.status == status, info.value.message
    return info.value


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


async def snapshot(c: Client, name: str, volume_id: str) -> csi.Snapshot:
    """CreateSnapshot, which must answer a snapshot ready to use."""
    resp = await c.controller.create_snapshot(csi.CreateSnapshotRequest(name=name, source_volume_id=volume_id))
    assert resp.snapshot is not None and resp.snapshot.ready_to_use
    return resp.snapshot


async def copy_under_writes(c: Client, driver: DriverProcess, source: Lifecycle, kind: str, size: int,
                            fs_type: str = "ext4") -> tuple[Restored, int, int, csi.Snapshot | None]:
    """Snapshot (``kind == "snapshot"``) or clone the published ``source`` while a writer appends records to it.

    Returns the copy (a clone is created, a snapshot's restore is not yet), the records written before the
    request and by its response, and the snapshot. The writer goes on after the response: the source is thawed.
    """
    taken = None
    with Writer(source.target / "log.bin") as writer:
        writer.wait_for(200)
        before = writer.done
        if kind == "snapshot":
            taken = await snapshot(c, "snap-live", source.volume_id)
            copy = Restored(c, driver, "pvc-restored-live", from_snapshot(taken.snapshot_id), size, fs_type)
        else:
            copy = Restored(c, driver, "pvc-clone-live", from_volume(source.volume_id), size, fs_type)
            await copy.create()
        after = writer.done
        writer.wait_for(after + 50)  # the source was thawed: writes go on
    return copy, before, after, taken


async def copy_while_written(c: Client, driver: DriverProcess, kind: str, fs_type: str = "ext4") -> None:
    size = 320 * MIB if fs_type == "xfs" else 128 * MIB  # mkfs.xfs needs 300 MiB
    source = Lifecycle(c, driver, f"pvc-live-{kind}", mount_cap(fs_type), size)
    await source.up()
    source.write()
    copy, before, after, _ = await copy_under_writes(c, driver, source, kind, size, fs_type)
    created = await copy.create()
    assert created.content_source == copy.source
    # The copy is mounted on the same node while its source still is (a local volume never moves): for xfs
    # that means two filesystems with one UUID.
    await check_copy_of_the_instant(copy, before, after)
    await source.down()


async def offered(c: Client) -> set[csi.ControllerServiceCapabilityRpcType]:
    """The controller capabilities the driver advertises."""
    caps = await c.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
    return {cap.rpc.type for cap in caps.capabilities if cap.rpc is not None}


async def delete_all_snapshots(c: Client) -> None:
    for entry in (await c.controller.list_snapshots(csi.ListSnapshotsRequest())).entries:
        assert entry.snapshot is not None
        await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=entry.snapshot.snapshot_id))


async def five_snapshots_of_two_volumes(c: Client, volume_bytes: int) -> tuple[list[str], dict[str, csi.Snapshot]]:
    """Two volumes (``pvc-list-0``, ``-1``) and five snapshots taken of them in turn: their ids and snapshots."""
    volumes = [(await c.controller.create_volume(create_request(f"pvc-list-{i}", volume_bytes))).volume
               for i in range(2)]
    ids = [v.volume_id for v in volumes if v]
    made = {}
    for i in range(5):
        taken = await snapshot(c, f"snap-list-{i}", ids[i % 2])
        made[taken.snapshot_id] = taken
    return ids, made
