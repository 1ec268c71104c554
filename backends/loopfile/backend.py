"""The ``loopfile`` backend: each volume is an image file attached as a loop device.

Layout under ``--loopfile-dir``::

    <id>.img                  the volume's data (sparse for thin, fallocated for thick)
    <id>.json                 its metadata record (schema 1), written atomically
    snapshots/<snap id>.img   a snapshot: an independent copy of a volume's image
    snapshots/<snap id>.json  its record (schema 1)

Crash safety comes from ordering and names. A new blank volume's image is
made as ``.tmp-<id>.img`` (fallocated and fsynced), its ``ready`` record is
written beside it (fsynced, renamed to ``<id>.json``), the image is renamed
to ``<id>.img`` and one fsync of the directory makes both names durable
before the caller hears of success: three fsyncs. Delete renames the image
back to ``.tmp-<id>.img`` (the mark), removes the record and the image, and
fsyncs the directory once. At start-up a ``.tmp-<id>.img`` is an unfinished
creation or deletion: it and ``<id>.json`` are removed (the caller was never
told it succeeded, and its retry starts clean). This relies on the renames of
one directory reaching the disk in the order they were made, which the
journals of ext4, xfs and btrfs guarantee; were they reordered, the worst
case is an image without a record, which is reported and left alone: we never
remove data we cannot account for.

Copies (clones, restores, snapshots) write a record in state ``creating``
first, then the copy, then the record ``ready``; a snapshot is deleted by
marking its record ``deleting`` first. At start-up a record left ``creating``
or ``deleting`` (also from older drivers, which made blank volumes that way)
is finished off, and an interrupted copy also thaws the source's filesystem,
which may have been frozen for it.

Snapshots and clones are copies: a copy-on-write clone (``FICLONE``) where the
image directory's filesystem shares extents (xfs with reflink, btrfs),
otherwise a sparse copy (:mod:`backends.system.reflink`). A source whose
filesystem is mounted is frozen for the instant of the copy, so the copy is
consistent. Volumes, their snapshots and the volumes restored from them are
independent: any of them can be deleted in any order.

Loop devices are attached at NodeStage with direct I/O and found again after
a driver restart from sysfs (``list_attached`` once at start-up), so a restart
neither leaks nor double-attaches them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import anyio
from loguru import logger

from backends import errors, paths
from backends.base import (
    Capacity,
    Condition,
    ContentSource,
    Features,
    Snapshot,
    SourceKind,
    Volume,
    VolumeSpec,
    is_snapshot_id,
    is_volume_id,
    published,
    snapshot_id_for,
)
from backends.copies import held_still, thaw_after_crash
from backends.faults import fault_point
from backends.loopfile.options import LoopfileOptions
from backends.loopfile.records import CREATING, DELETING, READY, SCHEMA, ImageRecord, SnapshotRecord
from backends.metadata import fsync_directory, fsync_path, load_record, write_record
from backends.provisioning import (
    MIB,
    Existing,
    check_repeat,
    check_snapshot_parameters,
    copy_size,
    parse_parameters,
    round_up,
    volume_size,
)
from backends.snapshots import SCHEMA as SNAPSHOT_SCHEMA
from backends.system import loop, reflink
from backends.system.loop import LOGICAL_BLOCK_BYTES
from backends.system.runner import Runner, require_tools

PARAM_PROVISIONING = "loopfile.localcsi.dev/provisioning"
PARAMETERS = {PARAM_PROVISIONING: ("thick", "thin")}
#: Prefix of an image being created or deleted (start-up removes it and its record).
PENDING_PREFIX = ".tmp-"
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class _CopySource:
    """The data a new volume or snapshot is copied from."""

    path: str
    size_bytes: int
    #: The live volume to freeze while copying; "" for a snapshot (nothing writes to it).
    volume_id: str
    block_size: int


def parse_thin(parameters: Mapping[str, str]) -> bool:
    """Return ``thin`` from StorageClass parameters; unknown keys are an error, not a silent default."""
    return parse_parameters(parameters, "loopfile", PARAMETERS).get(PARAM_PROVISIONING) == "thin"


def holds_no_data(path: str) -> bool:
    """True when the file at ``path`` has no data extent anywhere (every byte reads as zero).

    A filesystem without ``SEEK_DATA`` support reports the whole file as data, and any error is False: only
    a definite "no data" counts.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    finally:
        os.close(fd)
    return False

class LoopfileBackend:
    """Volumes as image files on a local filesystem, attached as direct-I/O loop devices."""

    name: ClassVar[str] = "loopfile"

    def __init__(self, node_id: str, options: LoopfileOptions, runner: Runner) -> None:
        options.validate()
        self._node_id = node_id
        self._options = options
        self._dir = os.path.abspath(options.directory)
        self._runner = runner
        self._ratio = options.overcommit
        self._direct_io = not options.buffered_io
        self._records: dict[str, ImageRecord] = {}
        self._snapshots: dict[str, SnapshotRecord] = {}
        self._snap_dir = os.path.join(self._dir, SNAPSHOT_DIR)
        #: Whether the image directory's filesystem shares extents (probed at start).
        self._reflink = False
        self._loops: dict[str, loop.LoopDevice] = {}
        #: Bytes thin volumes may still claim from the filesystem (capacity minus what they hold).
        self._thin_allocated: dict[str, int] = {}
        self._thin_allocated_at = 0.0
        self._features = options.features()

    # -- paths --------------------------------------------------------------
    def _image(self, volume_id: str) -> str:
        return os.path.join(self._dir, volume_id + ".img")

    def _meta(self, volume_id: str) -> str:
        return os.path.join(self._dir, volume_id + ".json")

    def _pending_image(self, volume_id: str) -> str:
        """The image's name while it is being created or deleted."""
        return os.path.join(self._dir, PENDING_PREFIX + volume_id + ".img")

    def _snap_image(self, snapshot_id: str) -> str:
        return os.path.join(self._snap_dir, snapshot_id + ".img")

    def _snap_meta(self, snapshot_id: str) -> str:
        return os.path.join(self._snap_dir, snapshot_id + ".json")

    @property
    def features(self) -> Features:
        return self._features

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def reflink_copies(self) -> bool:
        """Whether snapshots and clones are copy-on-write clones here (known after :meth:`start`)."""
        return self._reflink

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        require_tools(["mkfs.ext4", "mkfs.xfs", "blkid"])
        await anyio.to_thread.run_sync(self._prepare_directory)
        await anyio.to_thread.run_sync(self._finish_pending_images)
        records = await anyio.to_thread.run_sync(self._scan_records)
        snapshots = await anyio.to_thread.run_sync(self._scan_snapshots)
        self._records = {r.volume_id: r for r in records if r.state == READY}
        self._snapshots = {s.snapshot_id: s for s in snapshots if s.state == READY}
        await self._find_loops()
        for record in records:
            if record.state != READY:
                await self._finish_interrupted_volume(record)
        for snap in snapshots:
            if snap.state != READY:
                await self._finish_interrupted_snapshot(snap)
        self._reflink = await anyio.to_thread.run_sync(reflink.supports_reflink_sync, self._snap_dir)
        logger.info(
            "loopfile backend ready: {} volumes, {} snapshots, {} attached, directory {} ({} copies)",
            len(self._records), len(self._snapshots), len(self._loops), self._dir,
            "reflink" if self._reflink else "sparse",
        )

    async def _find_loops(self) -> None:
        image_dir = self._dir + os.sep
        for dev in await loop.list_attached():
            if dev.backing_file.startswith(image_dir) and not dev.autoclear:
                volume_id = os.path.basename(dev.backing_file).removesuffix(".img")
                if volume_id in self._records:
                    self._loops[volume_id] = dev
                else:
                    logger.warning("loop device {} backs {}, which no volume owns", dev.path, dev.backing_file)

    async def _finish_interrupted_volume(self, record: ImageRecord) -> None:
        creating = record.state == CREATING
        logger.warning("finishing interrupted {} of volume {}", "creation" if creating else "deletion",
                       record.volume_id)
        if creating and record.source is not None and record.source.kind is SourceKind.VOLUME:
            await self._thaw_after_crash(record.source.source_id)
        await self._remove_files(record.volume_id)

    async def _finish_interrupted_snapshot(self, snap: SnapshotRecord) -> None:
        creating = snap.state == CREATING
        logger.warning("finishing interrupted {} of snapshot {}", "creation" if creating else "deletion",
                       snap.snapshot_id)
        if creating:
            await self._thaw_after_crash(snap.source_volume_id)
        await self._remove_snapshot_files(snap.snapshot_id)

    async def _thaw_after_crash(self, volume_id: str) -> None:
        """A copy of ``volume_id`` was cut short: its filesystem may still be frozen by us. Thaw it."""
        await thaw_after_crash(volume_id, await self.device_path(volume_id))

    def _prepare_directory(self) -> None:
        try:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            os.makedirs(self._snap_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise errors.Unavailable(f"cannot create the loopfile directory {self._dir}: {exc.strerror}") from exc
        if not os.access(self._dir, os.W_OK | os.X_OK):
            raise errors.Unavailable(f"the loopfile directory {self._dir} is not writable")
        probe = os.path.join(self._dir, ".probe")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise errors.Unavailable(f"the loopfile directory {self._dir} is not usable: {exc.strerror}") from exc
        for directory in (self._dir, self._snap_dir):
            for leftover in Path(directory).glob(".tmp-*.json"):
                leftover.unlink(missing_ok=True)

    def _finish_pending_images(self) -> None:
        """Blocking: remove what an interrupted creation or deletion left (``.tmp-<id>.img`` and its record)."""
        with os.scandir(self._dir) as entries:
            pending = [e.name for e in entries if e.name.startswith(PENDING_PREFIX) and e.name.endswith(".img")]
        for name in pending:
            volume_id = name[len(PENDING_PREFIX):-len(".img")]
            if not is_volume_id(volume_id):
                continue
            finished = os.path.exists(self._image(volume_id))  # never the case unless someone else made it
            logger.warning("finishing interrupted creation or deletion of volume {}", volume_id)
            os.unlink(os.path.join(self._dir, name))
            if not finished:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._meta(volume_id))
        if pending:
            fsync_directory(self._dir)

    def _scan_records(self) -> list[ImageRecord]:
        records = []
        with os.scandir(self._dir) as entries:
            names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        for name in sorted(names):
            if name.endswith(".json") and is_volume_id(name[:-5]):
                record = ImageRecord.from_json(load_record(os.path.join(self._dir, name), SCHEMA))
                records.append(record)
            elif name.endswith(".img") and name[:-4] + ".json" not in names:
                logger.warning("image {} has no metadata record; leaving it alone", name)
        return records

    def _scan_snapshots(self) -> list[SnapshotRecord]:
        with os.scandir(self._snap_dir) as entries:
            names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        snapshots = []
        for name in sorted(names):
            if name.endswith(".json") and is_snapshot_id(name[:-5]):
                data = load_record(os.path.join(self._snap_dir, name), SNAPSHOT_SCHEMA)
                snapshots.append(SnapshotRecord.from_json(data))
            elif name.endswith(".img") and name[:-4] + ".json" not in names:
                logger.warning("snapshot image {} has no metadata record; leaving it alone", name)
        return snapshots

    async def close(self) -> None:
        return None

    async def check_health(self) -> None:
        ok = await anyio.to_thread.run_sync(os.access, self._dir, os.W_OK | os.X_OK)
        if not ok:
            raise errors.Unavailable(f"the loopfile directory {self._dir} is not writable")

    # -- controller ---------------------------------------------------------
    async def create_volume(self, spec: VolumeSpec) -> Volume:
        thin = parse_thin(spec.parameters)
        volume_id = spec.volume_id
        existing = self._records.get(volume_id)
        if existing is not None:
            check_repeat(self._existing(existing), spec, {"provisioning": "thin" if thin else "thick"})
            return existing.to_volume()
        source = self._resolve_source(spec.source) if spec.source is not None else None
        size = volume_size(spec, MIB) if source is None else copy_size(spec, source.size_bytes, MIB)
        record = ImageRecord(
            volume_id=volume_id, name=spec.name, capacity_bytes=size, thin=thin, state=CREATING,
            created_at=datetime.now(UTC).isoformat(), source=spec.source,
            block_size=LOGICAL_BLOCK_BYTES if source is None else source.block_size,
        )
        if source is None:
            # The whole creation is one worker-thread hop: space check, intent record, image, ready record.
            outstanding = await self._thin_outstanding()
            await anyio.to_thread.run_sync(self._create_files, record, outstanding)
        else:
            await self._reserve(size, thin)
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id), record.to_json())
            fault_point("create.after_meta")
            try:
                await self._copy_consistent(source, self._image(volume_id))
                await anyio.to_thread.run_sync(self._fit_image, self._image(volume_id), size, thin)
                fault_point("create.after_image")
                await anyio.to_thread.run_sync(write_record, self._meta(volume_id),
                                               replace(record, state=READY).to_json())
                fault_point("create.after_ready")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._remove_files(volume_id)
                raise
        record = replace(record, state=READY)
        self._records[volume_id] = record
        if thin:
            self._thin_allocated[volume_id] = 0
        logger.debug("created {} volume {} of {} bytes", "thin" if thin else "thick", volume_id, size)
        return record.to_volume()

    def _create_files(self, record: ImageRecord, thin_outstanding: int) -> None:
        """Blocking: check space, make the pending image, write the ready record, then publish the image's name.

        Three fsyncs, two journal commits: the record's fsync commits the image's allocation with it, so the
        image's own fsync that follows finds nothing left to commit; then the directory, after both renames.
        Any failure removes what this call wrote; a crash leaves ``.tmp-<id>.img``, which start-up removes with
        the record.
        """
        self._check_space(record.capacity_bytes, record.thin, thin_outstanding)
        image, pending = self._image(record.volume_id), self._pending_image(record.volume_id)
        if os.path.lexists(image):  # an image without a record: not ours to overwrite
            raise FileExistsError(errno.EEXIST, "an image without a metadata record is in the way", image)
        self._make_image(pending, record.capacity_bytes, record.thin)
        try:
            fault_point("create.after_image")
            write_record(self._meta(record.volume_id), replace(record, state=READY).to_json(), sync_directory=False)
            fault_point("create.after_meta")
            fsync_path(pending)
            os.rename(pending, image)
            fsync_directory(self._dir)
            fault_point("create.after_ready")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending)
            self._remove_files_sync(record.volume_id)
            raise

    def _available_sync(self, thin_outstanding: int) -> int:
        """Bytes new volumes may take: free space less what thin volumes may still grow into, in whole MiB."""
        st = os.statvfs(self._dir)
        available = max(0, int(st.f_bavail * st.f_frsize - thin_outstanding / self._ratio))
        return available - available % MIB

    def _check_space(self, size: int, thin: bool, thin_outstanding: int) -> None:
        available = self._available_sync(thin_outstanding)
        needed = size / self._ratio if thin else size
        if needed > available:
            raise errors.CapacityExhausted(
                f"not enough space: {size} bytes asked, {available} bytes available on this node"
            )

    def _resolve_source(self, source: ContentSource) -> _CopySource:
        """Where the data of a content source is, and which volume (if any) to freeze while copying it."""
        if source.kind is SourceKind.SNAPSHOT:
            snap = self._snapshots.get(source.source_id)
            if snap is None:
                raise errors.SnapshotNotFound(source.source_id)
            return _CopySource(self._snap_image(snap.snapshot_id), snap.size_bytes, "", snap.block_size)
        volume = self._records.get(source.source_id)
        if volume is None:
            raise errors.VolumeNotFound(source.source_id)
        return _CopySource(self._image(volume.volume_id), volume.capacity_bytes, volume.volume_id,
                           volume.block_size)

    async def _copy_consistent(self, source: _CopySource, target: str) -> reflink.CopyResult:
        """Copy ``source`` to the new file ``target``, the source volume held still for the copy."""
        device = await self.device_path(source.volume_id) if source.volume_id else None
        async with held_still(source.volume_id, device, atomic_copy=self._reflink):
            result = await reflink.copy_image(source.path, target)
        logger.info("copied {} to {} ({}, {} bytes moved)", source.path, target, result.method.value,
                    result.copied_bytes)
        return result

    @staticmethod
    def _fit_image(path: str, size: int, thin: bool) -> None:
        """Grow a copied image to ``size``; a thick volume gets every block allocated."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            if not thin:
                os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise errors.CapacityExhausted(f"the loopfile filesystem has no room for {size} bytes") from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        finally:
            os.close(fd)

    @staticmethod
    def _existing(record: ImageRecord) -> Existing:
        return Existing(record.volume_id, record.name, record.capacity_bytes, record.source,
                        {"provisioning": "thin" if record.thin else "thick"})

    @staticmethod
    def _make_image(path: str, size: int, thin: bool) -> None:
        """Create and size the file at ``path``; not fsynced (the caller does, after the record's fsync)."""
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            if thin:
                os.ftruncate(fd, size)
            else:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise errors.CapacityExhausted(
                            f"the loopfile filesystem has no room for {size} bytes"
                        ) from exc
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(fd, size)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise errors.CapacityExhausted(f"the loopfile filesystem has no room for {size} bytes") from exc
            raise
        os.close(fd)

    async def _reserve(self, size: int, thin: bool) -> None:
        outstanding = await self._thin_outstanding()
        await anyio.to_thread.run_sync(self._check_space, size, thin, outstanding)

    def _remove_files_sync(self, volume_id: str) -> None:
        for path in (self._image(volume_id), self._meta(volume_id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        fsync_directory(self._dir)

    async def _remove_files(self, volume_id: str) -> None:
        await anyio.to_thread.run_sync(self._remove_files_sync, volume_id)

    async def delete_volume(self, volume_id: str) -> None:
        record = self._records.get(volume_id)
        if record is None:
            # Nothing we know of; a half-created leftover is cleared at start-up.
            return
        device = await self.device_path(volume_id)
        if device is not None:
            raise errors.VolumeInUse(f"volume {volume_id} is still attached as {device}; unstage it first")
        self._records.pop(volume_id, None)
        try:
            await anyio.to_thread.run_sync(self._delete_files, volume_id)
        except BaseException:
            self._records[volume_id] = record
            raise
        self._thin_allocated.pop(volume_id, None)
        logger.debug("deleted volume {}", volume_id)

    def _delete_files(self, volume_id: str) -> None:
        """Blocking: mark the image pending by renaming it (start-up finishes a crashed delete), remove both files.

        A rename needs no free space, so this works on a full filesystem too. One fsync, of the directory.
        """
        pending = self._pending_image(volume_id)
        with contextlib.suppress(FileNotFoundError):  # already gone: the record alone is left to remove
            os.rename(self._image(volume_id), pending)
        fault_point("delete.after_mark")
        for path in (self._meta(volume_id), pending):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        fsync_directory(self._dir)

    async def get_volume(self, volume_id: str) -> Volume:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        return record.to_volume(await self._condition(record))

    async def require_volume(self, volume_id: str) -> None:
        if volume_id not in self._records:
            raise errors.VolumeNotFound(volume_id)

    async def reads_as_zeros(self, volume_id: str) -> bool:
        """The image holds no data at all: ``SEEK_DATA`` from offset 0 finds none (holes and unwritten
        extents read as zeros; data still in the page cache counts as data)."""
        if volume_id not in self._records:
            return False
        return await anyio.to_thread.run_sync(holds_no_data, self._image(volume_id))

    async def list_volumes(self) -> list[Volume]:
        return [self._records[k].to_volume() for k in sorted(self._records)]

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        if parameters:
            parse_thin(parameters)
        outstanding = await self._thin_outstanding()
        available = await anyio.to_thread.run_sync(self._available_sync, outstanding)
        return Capacity(available_bytes=available, maximum_volume_bytes=available, minimum_volume_bytes=MIB)

    async def _thin_outstanding(self) -> int:
        """Bytes thin volumes may still grow into (capacity minus what they already hold)."""
        thin = [r for r in self._records.values() if r.thin]
        if not thin:
            return 0
        now = time.monotonic()
        if now - self._thin_allocated_at > 5.0:
            def allocated() -> dict[str, int]:
                out = {}
                for r in thin:
                    try:
                        out[r.volume_id] = os.stat(self._image(r.volume_id)).st_blocks * 512
                    except FileNotFoundError:
                        out[r.volume_id] = 0
                return out

            self._thin_allocated = await anyio.to_thread.run_sync(allocated)
            self._thin_allocated_at = now
        return sum(max(0, r.capacity_bytes - self._thin_allocated.get(r.volume_id, 0)) for r in thin)

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        new_size = round_up(required_bytes, MIB)
        if limit_bytes and new_size > limit_bytes:
            raise errors.OutOfRange(f"{new_size} bytes (rounded to MiB) exceeds the limit of {limit_bytes} bytes")
        if new_size <= record.capacity_bytes:
            return record.capacity_bytes
        await self._reserve(new_size - record.capacity_bytes, record.thin)

        def grow() -> None:
            fd = os.open(self._image(volume_id), os.O_RDWR | os.O_CLOEXEC)
            try:
                if record.thin:
                    os.ftruncate(fd, new_size)
                else:
                    os.posix_fallocate(fd, 0, new_size)
                os.fsync(fd)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    os.ftruncate(fd, record.capacity_bytes)
                    raise errors.CapacityExhausted(f"no room to grow volume {volume_id} to {new_size} bytes") from exc
                raise
            finally:
                os.close(fd)

        await anyio.to_thread.run_sync(grow)
        fault_point("expand.after_grow")
        grown = replace(record, capacity_bytes=new_size)
        await anyio.to_thread.run_sync(write_record, self._meta(volume_id), grown.to_json())
        self._records[volume_id] = grown
        logger.info("grew volume {} from {} to {} bytes", volume_id, record.capacity_bytes, new_size)
        return new_size

    async def publish_volume(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        if node_id != self._node_id:
            raise errors.NotFound(f"node {node_id!r} is unknown here: volume {volume_id} lives on {self._node_id!r}")
        change = published(record.published_node_ids, record.readonly_node_ids, node_id, readonly)
        if change is not None:
            published_record = replace(record, published_node_ids=change[0], readonly_node_ids=change[1])
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id), published_record.to_json())
            self._records[volume_id] = published_record
        return {}

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None:
        record = self._records.get(volume_id)
        if record is None or (node_id and node_id not in record.published_node_ids):
            return
        remaining = tuple(n for n in record.published_node_ids if node_id and n != node_id)
        unpublished = replace(record, published_node_ids=remaining,
                              readonly_node_ids=tuple(n for n in record.readonly_node_ids if n in remaining))
        await anyio.to_thread.run_sync(write_record, self._meta(volume_id), unpublished.to_json())
        self._records[volume_id] = unpublished

    async def _condition(self, record: ImageRecord) -> Condition:
        def check() -> Condition:
            try:
                st = os.stat(self._image(record.volume_id))
            except FileNotFoundError:
                return Condition(abnormal=True, message=f"image file of volume {record.volume_id} is missing")
            if st.st_size < record.capacity_bytes:
                return Condition(abnormal=True, message="image file is smaller than the recorded capacity")
            return Condition()

        return await anyio.to_thread.run_sync(check)

    # -- node ---------------------------------------------------------------
    async def attach(self, volume_id: str, readonly: bool) -> str:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        current = await self.device_path(volume_id)
        if current is not None:
            return current
        dev = await loop.attach(self._image(volume_id), readonly=readonly, direct_io=self._direct_io,
                                block_size=record.block_size)
        self._loops[volume_id] = dev
        logger.info("attached volume {} as {} (direct I/O {})", volume_id, dev.path, dev.direct_io)
        return dev.path

    async def device_path(self, volume_id: str) -> str | None:
        dev = self._loops.get(volume_id)
        if dev is None:
            return None
        # Cheap check that the device still backs this image (someone may have detached it).
        current = await loop.get_device(dev.path)
        # A device being detached (autoclear, see loop.detach) dies at its holder's last close: never hand it out.
        if current is None or current.backing_file != self._image(volume_id) or current.autoclear:
            self._loops.pop(volume_id, None)
            return None
        return dev.path

    async def detach(self, volume_id: str) -> None:
        device = await self.device_path(volume_id)
        if device is None:
            return
        users = await paths.device_in_use(device)
        if users:
            raise errors.VolumeInUse(f"{device} of volume {volume_id} is still mounted at {', '.join(users)}")
        await loop.detach(device)
        self._loops.pop(volume_id, None)
        logger.info("detached volume {} from {}", volume_id, device)

    async def refresh_device_size(self, volume_id: str) -> int:
        device = await self.device_path(volume_id)
        if device is None:
            raise errors.PreconditionFailed(f"volume {volume_id} is not attached on this node")
        return await loop.refresh_capacity(device)

    # -- snapshots ----------------------------------------------------------
    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot:
        check_snapshot_parameters(parameters, "loopfile")
        snapshot_id = snapshot_id_for(name)
        existing = self._snapshots.get(snapshot_id)
        if existing is not None:
            if existing.name != name or existing.source_volume_id != source_volume_id:
                raise errors.SnapshotConflict(f"snapshot {name!r} exists with another source volume")
            return existing.to_snapshot()
        source = self._resolve_source(ContentSource(SourceKind.VOLUME, source_volume_id))
        record = SnapshotRecord(
            snapshot_id=snapshot_id, name=name, source_volume_id=source_volume_id, size_bytes=source.size_bytes,
            state=CREATING, created_at=datetime.now(UTC).isoformat(), block_size=source.block_size,
        )
        await anyio.to_thread.run_sync(write_record, self._snap_meta(snapshot_id), record.to_json())
        try:
            result = await self._copy_consistent(source, self._snap_image(snapshot_id))
            record = replace(record, state=READY, method=result.method.value)
            await anyio.to_thread.run_sync(write_record, self._snap_meta(snapshot_id), record.to_json())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove_snapshot_files(snapshot_id)
            raise
        self._snapshots[snapshot_id] = record
        logger.info("created snapshot {} of volume {} ({})", snapshot_id, source_volume_id, record.method)
        return record.to_snapshot()

    async def _remove_snapshot_files(self, snapshot_id: str) -> None:
        def remove() -> None:
            for path in (self._snap_image(snapshot_id), self._snap_meta(snapshot_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fsync_directory(self._snap_dir)

        await anyio.to_thread.run_sync(remove)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        record = self._snapshots.pop(snapshot_id, None)
        if record is None:
            return
        try:
            deleting = replace(record, state=DELETING)
            await anyio.to_thread.run_sync(write_record, self._snap_meta(snapshot_id), deleting.to_json())
            await self._remove_snapshot_files(snapshot_id)
        except BaseException:
            self._snapshots[snapshot_id] = record
            raise
        logger.info("deleted snapshot {}", snapshot_id)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        record = self._snapshots.get(snapshot_id)
        if record is None:
            raise errors.SnapshotNotFound(snapshot_id)
        return record.to_snapshot()

    async def list_snapshots(self) -> list[Snapshot]:
        return [self._snapshots[k].to_snapshot() for k in sorted(self._snapshots)]
