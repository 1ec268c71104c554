"""Loopfile snapshots and clones at the backend level, on real filesystems.

The image directory of each test is a loop-mounted filesystem the test makes
itself: xfs with ``reflink=1`` (copy-on-write clones) or ext4 (sparse copies),
so the space a snapshot costs can be measured with ``statvfs``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from backends import errors
from backends.base import ContentSource, SourceKind, VolumeSpec, snapshot_id_for
from backends.loopfile.backend import PARAM_PROVISIONING, LoopfileBackend
from backends.system import reflink
from tests.backends.loopfile.support import started
from tests.filesystems import mounted_filesystem

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20
GIB = 1 << 30
#: Data written into the 1 GiB volume before it is snapshotted.
WRITTEN_BYTES = 256 * MIB
#: What a reflink snapshot of that volume may cost on xfs: metadata only (measured: under 1 MiB).
REFLINK_SLACK_BYTES = 4 * MIB


@dataclass
class ImageFs:
    root: Path
    kind: str

    @property
    def mount_point(self) -> Path:
        return self.root / "mnt"

    @property
    def volumes(self) -> Path:
        return self.mount_point / "volumes"

    def used_bytes(self) -> int:
        subprocess.run(["sync", "-f", str(self.mount_point)], check=True)
        st = os.statvfs(self.mount_point)
        return (st.f_blocks - st.f_bfree) * st.f_frsize


@contextlib.contextmanager
def image_filesystem(kind: str, size: int = 4 * GIB) -> Iterator[ImageFs]:
    """A loop-mounted xfs (reflink) or ext4 filesystem in a scratch directory, removed afterwards."""
    fs = ImageFs(Path(tempfile.mkdtemp(prefix="localcsi-snap-")), kind)
    try:
        with mounted_filesystem(kind, size, fs.mount_point):
            yield fs
    finally:
        shutil.rmtree(fs.root, ignore_errors=True)


@pytest.fixture(params=["xfs", "ext4"])
def image_fs(request: pytest.FixtureRequest) -> Iterator[ImageFs]:
    with image_filesystem(request.param) as fs:
        yield fs


@pytest.fixture
async def backend(image_fs: ImageFs) -> AsyncIterator[LoopfileBackend]:
    b = await started(image_fs.volumes)
    try:
        yield b
    finally:
        for dev in list(b._loops.values()):
            subprocess.run(["losetup", "-d", dev.path], check=False)


def spec(name: str, size: int = 64 * MIB, source: ContentSource | None = None, *, thin: bool = False,
         limit: int = 0) -> VolumeSpec:
    params = {PARAM_PROVISIONING: "thin"} if thin else {}
    return VolumeSpec(name, size, limit, params, fs_type="ext4", source=source)


def fill(path: str, offset: int, length: int, seed: bytes) -> str:
    """Write ``length`` deterministic bytes at ``offset``; return their sha256."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY)
    try:
        block = hashlib.sha256(seed).digest() * (MIB // 32)
        for i in range(length // MIB):
            os.pwrite(fd, block, offset + i * MIB)
            digest.update(block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def digest_of(path: str, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining:
            chunk = handle.read(min(MIB, remaining))
            assert chunk
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


async def test_snapshot_space_reflink_vs_sparse(image_fs: ImageFs, backend: LoopfileBackend) -> None:
    """A 1 GiB thick volume with 256 MiB written: a reflink snapshot on xfs costs (almost) nothing,
    a sparse copy on ext4 costs the written data only, never the full 1 GiB."""
    assert backend.reflink_copies is (image_fs.kind == "xfs")
    vol = await backend.create_volume(spec("pvc-space", GIB))
    image = backend._image(vol.volume_id)
    written = fill(image, 16 * MIB, WRITTEN_BYTES, b"space")
    before = image_fs.used_bytes()
    snap = await backend.create_snapshot(vol.volume_id, "snap-space", {})
    cost = image_fs.used_bytes() - before
    snap_blocks = os.stat(backend._snap_image(snap.snapshot_id)).st_blocks * 512
    record = json.loads(Path(backend._snap_meta(snap.snapshot_id)).read_text())
    print(f"{image_fs.kind}: snapshot of 1 GiB volume ({WRITTEN_BYTES >> 20} MiB written) cost {cost} bytes, "
          f"st_blocks {snap_blocks} bytes, method {record['method']}")
    assert snap.size_bytes == GIB and snap.ready_to_use
    if image_fs.kind == "xfs":
        assert record["method"] == "reflink"
        assert cost < REFLINK_SLACK_BYTES
    else:
        assert record["method"] == "sparse"
        # The snapshot is sparse: the written data plus a little metadata, not the volume's 1 GiB.
        assert WRITTEN_BYTES <= snap_blocks < WRITTEN_BYTES + 4 * MIB
        assert WRITTEN_BYTES <= cost < WRITTEN_BYTES + 8 * MIB
    # The copy is independent: overwrite the source, the snapshot keeps the old data.
    fill(image, 16 * MIB, 4 * MIB, b"overwritten")
    assert digest_of(backend._snap_image(snap.snapshot_id), 16 * MIB, WRITTEN_BYTES) == written
    restored = await backend.create_volume(spec("pvc-restored", GIB, ContentSource(SourceKind.SNAPSHOT,
                                                                                    snap.snapshot_id)))
    assert restored.capacity_bytes == GIB
    assert restored.source == ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)
    assert digest_of(backend._image(restored.volume_id), 16 * MIB, WRITTEN_BYTES) == written


async def test_restore_grows_thin_and_thick_to_the_requested_size(backend: LoopfileBackend) -> None:
    vol = await backend.create_volume(spec("pvc-src", 64 * MIB, thin=True))
    written = fill(backend._image(vol.volume_id), 0, 8 * MIB, b"grow")
    snap = await backend.create_snapshot(vol.volume_id, "snap-grow", {})
    source = ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)
    for thin in (True, False):
        big = await backend.create_volume(spec(f"pvc-big-{thin}", 96 * MIB, source, thin=thin))
        image = backend._image(big.volume_id)
        st = os.stat(image)
        assert (big.capacity_bytes, st.st_size) == (96 * MIB, 96 * MIB)
        if not thin:
            assert st.st_blocks * 512 >= 96 * MIB  # thick: every block allocated (or shared)
        assert digest_of(image, 0, 8 * MIB) == written
        with open(image, "rb") as handle:
            handle.seek(95 * MIB)
            assert handle.read(MIB) == bytes(MIB)  # the grown tail reads as zeros


async def test_clone_of_a_volume(backend: LoopfileBackend) -> None:
    vol = await backend.create_volume(spec("pvc-orig", 64 * MIB))
    written = fill(backend._image(vol.volume_id), MIB, 32 * MIB, b"clone")
    source = ContentSource(SourceKind.VOLUME, vol.volume_id)
    clone = await backend.create_volume(spec("pvc-clone", 64 * MIB, source))
    assert clone.source == source
    assert digest_of(backend._image(clone.volume_id), MIB, 32 * MIB) == written
    again = await backend.create_volume(spec("pvc-clone", 64 * MIB, source))
    assert again.volume_id == clone.volume_id
    with pytest.raises(errors.VolumeConflict):
        await backend.create_volume(spec("pvc-clone", 64 * MIB))


async def test_error_codes(backend: LoopfileBackend) -> None:
    vol = await backend.create_volume(spec("pvc-a", 64 * MIB))
    other = await backend.create_volume(spec("pvc-b", 64 * MIB))
    snap = await backend.create_snapshot(vol.volume_id, "snap-a", {})
    # Idempotent by name; the same name from another source is a conflict.
    assert await backend.create_snapshot(vol.volume_id, "snap-a", {}) == snap
    with pytest.raises(errors.SnapshotConflict):
        await backend.create_snapshot(other.volume_id, "snap-a", {})
    with pytest.raises(errors.VolumeNotFound):
        await backend.create_snapshot("lcv-" + "0" * 32, "snap-missing", {})
    with pytest.raises(errors.UnsupportedParameter):
        await backend.create_snapshot(vol.volume_id, "snap-param", {"compress": "yes"})
    await backend.create_snapshot(vol.volume_id, "snap-k8s", {"csi.storage.k8s.io/volumesnapshot/name": "x"})
    with pytest.raises(errors.SnapshotNotFound):
        await backend.create_volume(spec("pvc-c", 64 * MIB, ContentSource(SourceKind.SNAPSHOT,
                                                                           snapshot_id_for("nope"))))
    with pytest.raises(errors.VolumeNotFound):
        await backend.create_volume(spec("pvc-c", 64 * MIB, ContentSource(SourceKind.VOLUME, "lcv-" + "1" * 32)))
    source = ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)
    with pytest.raises(errors.OutOfRange):
        await backend.create_volume(spec("pvc-small", 32 * MIB, source))
    with pytest.raises(errors.OutOfRange):
        await backend.create_volume(spec("pvc-limit", 0, source, limit=32 * MIB))
    assert (await backend.create_volume(spec("pvc-default", 0, source))).capacity_bytes == 64 * MIB
    with pytest.raises(errors.SnapshotNotFound):
        await backend.get_snapshot(snapshot_id_for("nope"))
    # Refused requests left nothing behind: two snapshots, image + record each.
    assert len(files_in(Path(backend._snap_dir))) == 4


async def test_delete_in_every_order_leaks_nothing(image_fs: ImageFs, backend: LoopfileBackend) -> None:
    orders = [("volume", "snapshot", "restored"), ("volume", "restored", "snapshot"),
              ("snapshot", "volume", "restored"), ("snapshot", "restored", "volume"),
              ("restored", "volume", "snapshot"), ("restored", "snapshot", "volume")]
    for n, order in enumerate(orders):
        vol = await backend.create_volume(spec(f"pvc-{n}", 32 * MIB))
        fill(backend._image(vol.volume_id), 0, MIB, b"%d" % n)
        snap = await backend.create_snapshot(vol.volume_id, f"snap-{n}", {})
        restored = await backend.create_volume(spec(f"pvc-r{n}", 32 * MIB, ContentSource(SourceKind.SNAPSHOT,
                                                                                          snap.snapshot_id)))
        removers: dict[str, Callable[[], Awaitable[None]]] = {
            "volume": functools.partial(backend.delete_volume, vol.volume_id),
            "snapshot": functools.partial(backend.delete_snapshot, snap.snapshot_id),
            "restored": functools.partial(backend.delete_volume, restored.volume_id),
        }
        for what in order:
            await removers[what]()
            await removers[what]()  # deleting again is success
    assert await backend.list_snapshots() == []
    assert await backend.list_volumes() == []
    assert files_in(image_fs.volumes) == []


async def test_snapshots_survive_restart_and_interrupted_work_is_cleared(image_fs: ImageFs,
                                                                         backend: LoopfileBackend) -> None:
    vol = await backend.create_volume(spec("pvc-restart", 32 * MIB))
    snaps = [await backend.create_snapshot(vol.volume_id, f"snap-{i}", {}) for i in range(3)]
    # A snapshot whose copy was cut short, and one whose deletion was.
    for name, state in (("snap-creating", "creating"), ("snap-deleting", "deleting")):
        sid = snapshot_id_for(name)
        Path(backend._snap_image(sid)).write_bytes(b"partial")
        Path(backend._snap_meta(sid)).write_text(json.dumps({
            "schema": 1, "snapshot_id": sid, "name": name, "source_volume_id": vol.volume_id,
            "size_bytes": 32 * MIB, "state": state, "created_at": "2024-01-01T00:00:00+00:00"}))
    # An image nobody accounts for is left alone.
    stray = image_fs.volumes / "snapshots" / "stray.img"
    stray.write_bytes(b"keep me")
    again = await started(image_fs.volumes)
    assert await again.list_snapshots() == sorted(snaps, key=lambda s: s.snapshot_id)
    assert files_in(image_fs.volumes / "snapshots") == sorted(
        [f"{s.snapshot_id}.{ext}" for s in snaps for ext in ("img", "json")] + ["stray.img"])
    stray.unlink()


def start_write(path: Path, name: str) -> subprocess.Popen[bytes]:
    """Start creating a file under ``path``; on a frozen filesystem the process blocks until the thaw."""
    return subprocess.Popen(["touch", str(path / name)])


def blocked(proc: subprocess.Popen[bytes], seconds: float = 1.0) -> bool:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


@contextlib.asynccontextmanager
async def mounted_volume(backend: LoopfileBackend, volume_id: str, root: Path) -> AsyncIterator[Path]:
    device = await backend.attach(volume_id, readonly=False)
    subprocess.run(["mkfs.ext4", "-q", device], check=True)
    point = root / f"mnt-{volume_id}"
    point.mkdir()
    subprocess.run(["mount", device, str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["fsfreeze", "-u", str(point)], check=False, capture_output=True)
        subprocess.run(["umount", str(point)], check=False)
        await backend.detach(volume_id)


@pytest.mark.parametrize("image_fs", ["ext4"], indirect=True)
async def test_a_failed_copy_always_thaws(image_fs: ImageFs, backend: LoopfileBackend,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    vol = await backend.create_volume(spec("pvc-thaw", 64 * MIB))
    writers: list[subprocess.Popen[bytes]] = []

    async def failing_copy(src: str, dst: str, *, allow_reflink: bool = True) -> reflink.CopyResult:
        writers.append(start_write(point, "during-copy"))
        await anyio.to_thread.run_sync(blocked, writers[0])
        Path(dst).write_bytes(b"half")
        raise OSError(5, "simulated I/O error")

    async with mounted_volume(backend, vol.volume_id, image_fs.root) as point:
        monkeypatch.setattr(reflink, "copy_image", failing_copy)
        with pytest.raises(OSError, match="simulated"):
            await backend.create_snapshot(vol.volume_id, "snap-fail", {})
        # The write started during the copy was held back (frozen), and completes after the failure (thawed).
        assert writers[0].returncode is None
        assert writers[0].wait(timeout=10) == 0
        assert await backend.list_snapshots() == []
        assert files_in(image_fs.volumes / "snapshots") == []


@pytest.mark.parametrize("image_fs", ["ext4"], indirect=True)
async def test_restart_thaws_a_filesystem_left_frozen_by_a_crash(image_fs: ImageFs,
                                                                 backend: LoopfileBackend) -> None:
    vol = await backend.create_volume(spec("pvc-crash", 64 * MIB))
    async with mounted_volume(backend, vol.volume_id, image_fs.root) as point:
        # The driver died between FIFREEZE and FITHAW of this snapshot's copy.
        sid = snapshot_id_for("snap-crash")
        Path(backend._snap_meta(sid)).write_text(json.dumps({
            "schema": 1, "snapshot_id": sid, "name": "snap-crash", "source_volume_id": vol.volume_id,
            "size_bytes": 64 * MIB, "state": "creating", "created_at": "2024-01-01T00:00:00+00:00"}))
        subprocess.run(["fsfreeze", "-f", str(point)], check=True)
        writer = start_write(point, "after-crash")
        assert blocked(writer)
        again = await started(image_fs.volumes)
        assert writer.wait(timeout=10) == 0
        assert await again.list_snapshots() == []
        assert again._loops.keys() == {vol.volume_id}


async def test_raw_block_volume_in_use(image_fs: ImageFs, backend: LoopfileBackend) -> None:
    """No filesystem to freeze: a clone (atomic against writes) is taken; a plain copy would tear, so it is refused."""
    vol = await backend.create_volume(spec("pvc-raw", 32 * MIB))
    written = fill(backend._image(vol.volume_id), 0, 4 * MIB, b"raw")
    device = await backend.attach(vol.volume_id, readonly=False)
    target = image_fs.root / "pod-device"
    target.touch()
    subprocess.run(["mount", "--bind", device, str(target)], check=True)
    try:
        if image_fs.kind == "xfs":
            snap = await backend.create_snapshot(vol.volume_id, "snap-raw", {})
            assert digest_of(backend._snap_image(snap.snapshot_id), 0, 4 * MIB) == written
        else:
            with pytest.raises(errors.VolumeInUse, match="unpublish"):
                await backend.create_snapshot(vol.volume_id, "snap-raw", {})
            assert files_in(Path(backend._snap_dir)) == []
    finally:
        subprocess.run(["umount", str(target)], check=True)
    # Attached but used by nobody: nothing writes, a plain copy is consistent.
    snap = await backend.create_snapshot(vol.volume_id, "snap-raw-idle", {})
    assert digest_of(backend._snap_image(snap.snapshot_id), 0, 4 * MIB) == written
    await backend.detach(vol.volume_id)
