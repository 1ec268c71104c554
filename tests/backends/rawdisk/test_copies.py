"""rawdisk clones, restores and snapshots against real loop devices standing in for disks."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from backends import errors
from backends.base import AccessType, ContentSource, SourceKind, VolumeSpec
from backends.rawdisk import claim as rawdisk_claim
from backends.rawdisk.backend import RawdiskBackend
from backends.rawdisk.inventory import State
from backends.system import blockcopy, gpt
from tests.backends.rawdisk.support import MIB, FakeDisks, fake_disks, running, sh

pytestmark = [pytest.mark.anyio, pytest.mark.root]


disks = pytest.fixture(fake_disks, name="disks")


@pytest.fixture
def snapshot_dir(disks: FakeDisks) -> Path:
    path = disks.root / "snapshots"
    path.mkdir()
    return path


def spec(name: str, required: int = 0, source: ContentSource | None = None, limit: int = 0) -> VolumeSpec:
    return VolumeSpec(name, required, limit, {}, AccessType.MOUNT, "ext4", source)


def of_volume(volume_id: str) -> ContentSource:
    return ContentSource(SourceKind.VOLUME, volume_id)


def of_snapshot(snapshot_id: str) -> ContentSource:
    return ContentSource(SourceKind.SNAPSHOT, snapshot_id)


def states(backend: RawdiskBackend) -> dict[str, State]:
    return {os.path.basename(d.path).removeprefix("disk-"): d.state for d in backend.inventory()}


@asynccontextmanager
async def mounted(backend: RawdiskBackend, volume_id: str) -> AsyncIterator[Path]:
    device = await backend.attach(volume_id, readonly=False)
    point = Path(tempfile.mkdtemp(prefix="localcsi-rawdisk-mnt-"))
    sh("mount", device, str(point))
    try:
        yield point
    finally:
        sh("umount", str(point))
        point.rmdir()
        await backend.detach(volume_id)


async def make_filesystem(backend: RawdiskBackend, volume_id: str, files: dict[str, bytes]) -> None:
    device = await backend.attach(volume_id, readonly=False)
    sh("mkfs.ext4", "-q", device)
    await backend.detach(volume_id)
    async with mounted(backend, volume_id) as point:
        for name, data in files.items():
            (point / name).write_bytes(data)


async def read_files(backend: RawdiskBackend, volume_id: str) -> dict[str, bytes]:
    async with mounted(backend, volume_id) as point:
        return {p.name: p.read_bytes() for p in point.iterdir() if p.is_file()}


async def test_clone_copies_the_data_onto_another_disk(disks: FakeDisks) -> None:
    disks.add("a", 128 * MIB)
    disks.add("b", 128 * MIB)
    disks.add("small", 64 * MIB)
    files = {"one": os.urandom(300_000), "two": b"hello" * 1000}
    async with running(disks) as backend:
        assert backend.features.clones and not backend.features.snapshots
        source = await backend.create_volume(spec("pvc-src", 100 * MIB))
        await make_filesystem(backend, source.volume_id, files)
        with pytest.raises(errors.OutOfRange):
            await backend.create_volume(spec("pvc-small", 64 * MIB, of_volume(source.volume_id)))
        with pytest.raises(errors.VolumeNotFound):
            await backend.create_volume(spec("pvc-x", 0, of_volume("lcv-" + "0" * 32)))
        clone = await backend.create_volume(spec("pvc-clone", 0, of_volume(source.volume_id)))
        assert clone.source == of_volume(source.volume_id)
        assert clone.capacity_bytes >= source.capacity_bytes
        assert clone.context["localcsi.dev/disk"] != source.context["localcsi.dev/disk"]
        assert (await backend.create_volume(spec("pvc-clone", 0, of_volume(source.volume_id)))).volume_id == \
            clone.volume_id
        with pytest.raises(errors.VolumeConflict):
            await backend.create_volume(spec("pvc-clone", 0))
        assert await read_files(backend, clone.volume_id) == files
        async with mounted(backend, source.volume_id) as point:  # the copy is independent of its source
            (point / "one").write_bytes(b"changed")
        assert await read_files(backend, clone.volume_id) == files
    async with running(disks) as backend:  # the source is recorded on the disk
        assert (await backend.get_volume(clone.volume_id)).source == of_volume(source.volume_id)


async def test_a_failed_copy_gives_the_disk_back(disks: FakeDisks, monkeypatch: pytest.MonkeyPatch) -> None:
    disks.add("a", 64 * MIB)
    disks.add("b", 64 * MIB)
    async with running(disks) as backend:
        source = await backend.create_volume(spec("pvc-src", 0))

        async def broken(src: blockcopy.Range, dst: blockcopy.Range) -> blockcopy.CopyStats:
            raise errors.SystemFailure("the copy broke")

        monkeypatch.setattr(blockcopy, "copy", broken)
        with pytest.raises(errors.SystemFailure):
            await backend.create_volume(spec("pvc-clone", 0, of_volume(source.volume_id)))
        assert [v.volume_id for v in await backend.list_volumes()] == [source.volume_id]
        assert sorted(states(backend).values(), key=lambda s: s.value) == [State.CLAIMED, State.FREE]


async def test_an_interrupted_clone_is_never_a_volume_and_is_wiped_at_start(disks: FakeDisks) -> None:
    device = disks.add("half", 64 * MIB)
    disks.add("other", 64 * MIB)
    source = of_volume("lcv-" + "1" * 32)
    record = rawdisk_claim.Record("lcv-" + "2" * 32, "pvc-half", datetime.now(UTC).isoformat(),
                                  state=rawdisk_claim.COPYING, source=source)
    # What a driver killed in the middle of a copy leaves: the claim, the record "copying", part of the data.
    rawdisk_claim.write(device, gpt.Layout(64 * MIB, 512), record)
    with open(device, "r+b") as handle:
        handle.seek(MIB)
        handle.write(b"half a copy" * 1000)
    async with running(disks) as backend:
        assert await backend.list_volumes() == []
        assert states(backend) == {"half": State.FREE, "other": State.FREE}
        with pytest.raises(errors.VolumeNotFound):
            await backend.get_volume(record.volume_id)
    assert disks.head("half") == bytes(2 * MIB)


async def test_snapshot_restore_and_independence(disks: FakeDisks, snapshot_dir: Path) -> None:
    for name in ("a", "b", "c"):
        disks.add(name, 128 * MIB)
    before = {"data": os.urandom(2 * MIB)}
    async with running(disks, snapshot_dir) as backend:
        assert backend.features.snapshots and backend.features.clones
        source = await backend.create_volume(spec("pvc-src", 0))
        await make_filesystem(backend, source.volume_id, before)
        async with mounted(backend, source.volume_id):  # staged: frozen for the copy
            snap = await backend.create_snapshot(source.volume_id, "snap-1", {})
        assert (snap.source_volume_id, snap.size_bytes, snap.ready_to_use) == (source.volume_id,
                                                                                 source.capacity_bytes, True)
        assert await backend.create_snapshot(source.volume_id, "snap-1", {}) == snap
        with pytest.raises(errors.SnapshotConflict):
            await backend.create_snapshot("lcv-" + "3" * 32, "snap-1", {})
        with pytest.raises(errors.UnsupportedParameter):
            await backend.create_snapshot(source.volume_id, "snap-2", {"bogus": "1"})
        image = snapshot_dir / f"{snap.snapshot_id}.img"
        assert image.stat().st_size == source.capacity_bytes
        assert image.stat().st_blocks * 512 < 16 * MIB  # sparse: a fresh ext4 and 2 MiB of data
        async with mounted(backend, source.volume_id) as point:
            (point / "data").write_bytes(b"after the snapshot")
        await backend.delete_volume(source.volume_id)  # the snapshot is independent of its volume
    async with running(disks, snapshot_dir) as backend:  # and survives a restart
        assert [s.snapshot_id for s in await backend.list_snapshots()] == [snap.snapshot_id]
        restored = await backend.create_volume(spec("pvc-restored", 0, of_snapshot(snap.snapshot_id)))
        assert restored.source == of_snapshot(snap.snapshot_id)
        assert await read_files(backend, restored.volume_id) == before
        await backend.delete_snapshot(snap.snapshot_id)
        await backend.delete_snapshot(snap.snapshot_id)
        assert await read_files(backend, restored.volume_id) == before
        await backend.delete_volume(restored.volume_id)
        assert await backend.list_snapshots() == []
        assert set(states(backend).values()) == {State.FREE}
    assert list(snapshot_dir.iterdir()) == []


async def test_without_a_snapshot_dir_there_are_no_snapshots(disks: FakeDisks) -> None:
    disks.add("a", 64 * MIB)
    async with running(disks) as backend:
        volume = await backend.create_volume(spec("pvc", 0))
        with pytest.raises(errors.InvalidArgument):
            await backend.create_snapshot(volume.volume_id, "snap", {})
        with pytest.raises(errors.SnapshotNotFound):
            await backend.create_volume(spec("pvc-r", 0, of_snapshot("lcs-" + "0" * 32)))
        assert await backend.list_snapshots() == []


async def volume_holding(backend: RawdiskBackend, name: str, random_bytes: int) -> str:
    """A new volume whose first ``random_bytes`` are random data, detached again: its id."""
    volume = await backend.create_volume(spec(name, 0))
    device = await backend.attach(volume.volume_id, readonly=False)
    with open(device, "r+b") as handle:
        handle.write(os.urandom(random_bytes))
    await backend.detach(volume.volume_id)
    return volume.volume_id


async def test_a_full_snapshot_dir_is_resource_exhausted_and_leaves_nothing(disks: FakeDisks) -> None:
    disks.add("a", 64 * MIB)
    small = disks.root / "small"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small))
    async with running(disks, small) as backend:
        volume_id = await volume_holding(backend, "pvc", 16 * MIB)
        with pytest.raises(errors.CapacityExhausted):
            await backend.create_snapshot(volume_id, "snap", {})
        assert await backend.list_snapshots() == []
    assert list(small.iterdir()) == []


async def test_a_published_block_source_is_refused(disks: FakeDisks, snapshot_dir: Path) -> None:
    disks.add("a", 64 * MIB)
    async with running(disks, snapshot_dir) as backend:
        volume = await backend.create_volume(VolumeSpec("pvc-block", 0, 0, {}, AccessType.BLOCK))
        device = await backend.attach(volume.volume_id, readonly=False)
        target = disks.root / "pod-device"
        target.touch()
        sh("mount", "--bind", device, str(target))
        try:
            with pytest.raises(errors.VolumeInUse):
                await backend.create_snapshot(volume.volume_id, "snap", {})
        finally:
            sh("umount", str(target))
        snap = await backend.create_snapshot(volume.volume_id, "snap", {})  # attached but unused: fine
        assert snap.ready_to_use
        await backend.detach(volume.volume_id)


async def test_copies_run_concurrently_with_other_calls(disks: FakeDisks, snapshot_dir: Path) -> None:
    for name in ("a", "b", "c"):
        disks.add(name, 256 * MIB)
    async with running(disks, snapshot_dir) as backend:
        source_id = await volume_holding(backend, "pvc-src", 128 * MIB)
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.create_volume, spec("pvc-clone", 0, of_volume(source_id)))
            tg.start_soon(backend.create_snapshot, source_id, "snap", {})
            tg.start_soon(backend.create_volume, spec("pvc-plain", 0))
        names = sorted(v.name for v in await backend.list_volumes())
        assert names == ["pvc-clone", "pvc-plain", "pvc-src"]


def test_zero_run_splitting() -> None:
    block = blockcopy.BLOCK_BYTES
    data = bytes(block) * 2 + b"x" * block + bytes(block) + b"y" * 10
    assert list(blockcopy.split_zero_blocks(data)) == [
        (0, 2 * block, True), (2 * block, block, False), (3 * block, block, True), (4 * block, 10, False)]


def test_sparse_image_copy_keeps_holes_and_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    size = 32 * MIB
    with src.open("wb") as handle:
        handle.truncate(size)
        handle.seek(5 * MIB + 123)
        handle.write(b"data in the middle")
        handle.seek(size - 7)
        handle.write(b"the end")
    dst = tmp_path / "dst.img"
    stats = blockcopy.copy_sync(blockcopy.Range(str(src), 0, size, blockcopy.Kind.IMAGE),
                                blockcopy.Range(str(dst), 0, size, blockcopy.Kind.IMAGE))
    assert dst.read_bytes() == src.read_bytes()
    assert stats.bytes_data == 2 * blockcopy.BLOCK_BYTES
    assert dst.stat().st_blocks * 512 <= 4 * blockcopy.BLOCK_BYTES
    with pytest.raises(errors.SystemFailure):  # never overwrites an image
        blockcopy.copy_sync(blockcopy.Range(str(src), 0, size, blockcopy.Kind.IMAGE),
                            blockcopy.Range(str(dst), 0, size, blockcopy.Kind.IMAGE))


def test_device_copy_zeroes_what_the_source_has_as_zeros(disks: FakeDisks) -> None:
    source = disks.add("src", 16 * MIB)
    target = disks.add("dst", 16 * MIB)
    with open(source, "r+b") as handle:
        handle.seek(3 * MIB)
        handle.write(b"s" * 4096)
    with open(target, "r+b") as handle:  # garbage the copy must replace with the source's zeros
        handle.write(os.urandom(16 * MIB))
    stats = blockcopy.copy_sync(blockcopy.Range(source, MIB, 8 * MIB, blockcopy.Kind.DEVICE),
                                blockcopy.Range(target, 2 * MIB, 8 * MIB, blockcopy.Kind.DEVICE))
    assert stats.bytes_data == blockcopy.BLOCK_BYTES
    with open(target, "rb") as handle:
        head = handle.read(2 * MIB)
        copied = handle.read(8 * MIB)
    expected = bytearray(8 * MIB)
    expected[2 * MIB:2 * MIB + 4096] = b"s" * 4096
    assert copied == bytes(expected)
    assert head != bytes(2 * MIB)  # nothing before the target range was touched


def test_copy_throughput_on_loop_disks(disks: FakeDisks, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted beyond sanity: random data (every block written) and an empty disk (all zeroout)."""
    size = 256 * MIB
    source = disks.add("src", size + 2 * MIB)
    target = disks.add("dst", size + 2 * MIB)
    with open(source, "r+b") as handle:
        handle.seek(MIB)
        for _ in range(size // (8 * MIB)):
            handle.write(os.urandom(8 * MIB))
    subprocess.run(["sync"], check=True)
    full = blockcopy.copy_sync(blockcopy.Range(source, MIB, size, blockcopy.Kind.DEVICE),
                               blockcopy.Range(target, MIB, size, blockcopy.Kind.DEVICE))
    image = blockcopy.copy_sync(blockcopy.Range(source, MIB, size, blockcopy.Kind.DEVICE),
                                blockcopy.Range(str(disks.root / "snap.img"), 0, size, blockcopy.Kind.IMAGE))
    restore = blockcopy.copy_sync(blockcopy.Range(str(disks.root / "snap.img"), 0, size, blockcopy.Kind.IMAGE),
                                  blockcopy.Range(target, MIB, size, blockcopy.Kind.DEVICE))
    with open(source, "r+b") as handle:
        handle.seek(MIB)
        handle.write(bytes(size))
    empty = blockcopy.copy_sync(blockcopy.Range(source, MIB, size, blockcopy.Kind.DEVICE),
                                blockcopy.Range(target, MIB, size, blockcopy.Kind.DEVICE))
    with capsys.disabled():
        print(f"\nblock copy of {size >> 20} MiB, loop disks: disk to disk {full.mib_per_second:.0f} MiB/s "
              f"(random data), {empty.mib_per_second:.0f} MiB/s (zeros); disk to image "
              f"{image.mib_per_second:.0f} MiB/s, image to disk {restore.mib_per_second:.0f} MiB/s (random data)")
    assert full.bytes_data == image.bytes_data == restore.bytes_data == size and empty.bytes_data == 0
