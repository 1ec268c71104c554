"""The ``loopfile`` backend: each volume is an image file attached as a loop device.

Layout under ``--loopfile-dir``::

    <id>.img                  the volume's data (sparse for thin, fallocated for thick)
    <id>.json                 its metadata record (schema 1), written atomically
    snapshots/                the snapshots (:class:`backends.snapshots.SnapshotStore`)

One instance owns the directory. Start-up first locks it (``flock`` of the directory itself, see
:mod:`backends.system.storagelock`): a second instance on the same directory (a DaemonSet update with
surge, another socket path, another container) stops there with "in use by PID N", before it has read,
repaired or thawed anything.

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
first, then the copy, then the record ``ready``. At start-up a record left
``creating`` (or ``deleting``, by older drivers) is finished off, and an
interrupted copy also thaws the source's filesystem, which may have been
frozen for it. Snapshots are deleted as volumes are (rename, then unlink):
deleting works on a full filesystem.

Snapshots and clones are copies: a copy-on-write clone (``FICLONE``) where the
image directory's filesystem shares extents (xfs with reflink, btrfs),
otherwise a sparse copy (:mod:`backends.system.reflink`). A source whose
filesystem is mounted is frozen for the instant of the copy, so the copy is
consistent. Volumes, their snapshots and the volumes restored from them are
independent: any of them can be deleted in any order.

Space promised is space kept (:mod:`backends.loopfile.space`): every volume is owed the blocks it may still
write (its holes, and on reflink its shared extents), and every operation that takes space is admitted
against the free space less those promises (:mod:`backends.reservations`): thin volumes, snapshots, clones
and copy-on-write all count, in GetCapacity and in each admission.

Loop devices are attached at NodeStage with direct I/O and found again after
a driver restart from sysfs (``list_attached`` once at start-up), so a restart
neither leaks nor double-attaches them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import ClassVar

import anyio
from loguru import logger

from backends import errors, health, paths
from backends.base import (
    Capacity,
    Condition,
    ContentSource,
    Snapshot,
    SourceKind,
    Volume,
    VolumeSpec,
    is_volume_id,
    published,
    snapshot_id_for,
)
from backends.copies import held_still, thaw_after_crash
from backends.faults import fault_point
from backends.loopfile import space
from backends.loopfile.options import LoopfileOptions
from backends.loopfile.records import CREATING, READY, SCHEMA, ImageRecord, SnapshotRecord
from backends.metadata import load_record, write_record
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
from backends.reservations import Reservations
from backends.snapshots import SnapshotStore
from backends.system import files, loop, reflink, storagelock
from backends.system.loop import LOGICAL_BLOCK_BYTES
from backends.system.runner import Runner, require_tools

PARAM_PROVISIONING = "loopfile.localcsi.dev/provisioning"
PARAMETERS = {PARAM_PROVISIONING: ("thick", "thin")}
#: Prefix of an image being created or deleted (start-up removes it and its record).
PENDING_PREFIX = files.TEMPORARY_PREFIX
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
    """True when the file at ``path`` has no data extent anywhere (see :func:`files.holds_no_data`)."""
    return files.holds_no_data(path)


def image_condition(record: ImageRecord, use: space.ImageUse, free_bytes: int, ratio: float) -> Condition:
    """The volume's condition as its image file and the image directory's free space show it."""
    if not use.present:
        return Condition(abnormal=True, message=f"the image file of volume {record.volume_id} is missing: its "
                                                "data is gone")
    if use.size_bytes < record.capacity_bytes:
        return Condition(abnormal=True, message=(
            f"the image file of volume {record.volume_id} is {use.size_bytes} bytes, smaller than the volume's "
            f"{record.capacity_bytes}: it was truncated, and the data past {use.size_bytes} bytes is gone"))
    if space.short_of_space(use, free_bytes, ratio):
        return Condition(abnormal=True, message=(
            f"the image directory's filesystem has {free_bytes} bytes free, less than the "
            f"{space.exposure_bytes(use)} bytes volume {record.volume_id} may still need to write all of it: "
            "its writes can fail with I/O errors"))
    return Condition()


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class LoopfileBackend:
    """Volumes as image files on a local filesystem, attached as direct-I/O loop devices."""

    name: ClassVar[str] = "loopfile"

    def __init__(self, node_id: str, options: LoopfileOptions, runner: Runner) -> None:
        options.validate()
        self.node_id = node_id
        self._options = options
        self._dir = os.path.abspath(options.directory)
        self._runner = runner
        self._ratio = options.overcommit
        self._direct_io = not options.buffered_io
        self._records: dict[str, ImageRecord] = {}
        self._snap_dir = os.path.join(self._dir, SNAPSHOT_DIR)
        self._snapshots = SnapshotStore(self._snap_dir, SnapshotRecord)
        #: Whether the image directory's filesystem shares extents (probed at start).
        #: Whether snapshots and clones are copy-on-write clones here (known after :meth:`start`).
        self.reflink_copies = False
        self._loops: dict[str, loop.LoopDevice] = {}
        self._space = Reservations(self._measure_available)
        self._lock: storagelock.StorageLock | None = None
        #: (st_dev, st_ino) of the directory when it was locked.
        self._dir_identity: tuple[int, int] | None = None
        self.features = options.features()

    # -- paths --------------------------------------------------------------
    def _image(self, volume_id: str) -> str:
        return os.path.join(self._dir, volume_id + ".img")

    def _meta(self, volume_id: str) -> str:
        return os.path.join(self._dir, volume_id + ".json")

    def _pending_image(self, volume_id: str) -> str:
        """The image's name while it is being created or deleted."""
        return os.path.join(self._dir, PENDING_PREFIX + volume_id + ".img")

    def _snap_image(self, snapshot_id: str) -> str:
        return self._snapshots.image(snapshot_id)

    def _snap_meta(self, snapshot_id: str) -> str:
        return self._snapshots.meta(snapshot_id)

    @property
    def directory(self) -> str:
        return self._dir

    # -- lifecycle ----------------------------------------------------------
    async def lock_storage(self) -> None:
        if self._lock is None:
            self._lock = await anyio.to_thread.run_sync(self._lock_directory)

    async def start(self) -> None:
        require_tools(["mkfs.ext4", "mkfs.xfs", "blkid"])
        try:
            await self._recover()
        except BaseException:
            await self.close()
            raise
        warnings = await anyio.to_thread.run_sync(
            lambda: health.startup_warnings(expansion=self.features.expansion,
                                            image_directory=self._dir if self._direct_io else ""))
        for warning in warnings:
            logger.warning("{}", warning)
        logger.info(
            "loopfile backend ready: {} volumes, {} snapshots, {} attached, directory {} ({} copies)",
            len(self._records), len(self._snapshots.records()), len(self._loops), self._dir,
            "reflink" if self.reflink_copies else "sparse",
        )

    def _lock_directory(self) -> storagelock.StorageLock:
        """Blocking: make the directory if need be and lock it, before anything in it is read."""
        try:
            files.ensure_directory(self._dir)
        except OSError as exc:
            raise errors.Unavailable(f"cannot create the loopfile directory {self._dir}: {exc.strerror}") from exc
        lock = storagelock.lock_directory(self._dir, f"the loopfile directory {self._dir}")
        self._dir_identity = _identity(self._dir)
        return lock

    def _same_directory_sync(self) -> None:
        """Blocking: the directory is still the one locked at start-up, not a mount point whose filesystem went
        away (unmounted, or replaced by another) nor a directory removed and made again; Unavailable if not."""
        if self._dir_identity is None:
            return
        try:
            now = _identity(self._dir)
        except OSError as exc:
            raise errors.Unavailable(f"the loopfile directory {self._dir} is gone: {exc.strerror}") from exc
        if now != self._dir_identity:
            raise errors.Unavailable(f"the loopfile directory {self._dir} is no longer the one this driver started "
                                     "on (its filesystem was unmounted or replaced): its volumes are not there")

    async def _recover(self) -> None:
        """Rebuild the index from the directory and finish what a crash interrupted (under the lock)."""
        await anyio.to_thread.run_sync(self._prepare_directory)
        await anyio.to_thread.run_sync(self._finish_pending_images)
        records = await anyio.to_thread.run_sync(self._scan_records)
        interrupted = await self._snapshots.start()
        self._records = {r.volume_id: r for r in records if r.state == READY}
        await self._find_loops()
        for record in records:
            if record.state != READY:
                await self._finish_interrupted_volume(record)
        for snap in interrupted:
            await self._finish_interrupted_snapshot(snap)
        self.reflink_copies = await anyio.to_thread.run_sync(reflink.supports_reflink_sync, self._snap_dir)

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
        await self._snapshots.remove(snap.snapshot_id)

    async def _thaw_after_crash(self, volume_id: str) -> None:
        """A copy of ``volume_id`` was cut short: its filesystem may still be frozen by us. Thaw it."""
        await thaw_after_crash(volume_id, await self.device_path(volume_id))

    def _prepare_directory(self) -> None:
        try:
            files.ensure_directory(self._dir)
            if not files.check_writable(self._dir):
                logger.warning("the filesystem of {} is full: deletions work, creations are refused", self._dir)
        except OSError as exc:
            raise errors.Unavailable(f"the loopfile directory {self._dir} is not usable: {exc.strerror}") from exc
        files.remove_leftovers(self._dir, PENDING_PREFIX + "*.json")

    def _finish_pending_images(self) -> None:
        """Blocking: remove what an interrupted creation or deletion left (``.tmp-<id>.img`` and its record)."""
        pending = [n for n in files.file_names(self._dir) if n.startswith(PENDING_PREFIX) and n.endswith(".img")]
        for name in pending:
            volume_id = name[len(PENDING_PREFIX):-len(".img")]
            if not is_volume_id(volume_id):
                continue
            finished = files.exists(self._image(volume_id))  # never the case unless someone else made it
            logger.warning("finishing interrupted creation or deletion of volume {}", volume_id)
            files.remove([os.path.join(self._dir, name)] + ([] if finished else [self._meta(volume_id)]))
        if pending:
            files.fsync_directory(self._dir)

    def _scan_records(self) -> list[ImageRecord]:
        records = []
        names = files.file_names(self._dir)
        for name in sorted(names):
            if name.endswith(".json") and is_volume_id(name[:-5]):
                record = ImageRecord.from_json(load_record(os.path.join(self._dir, name), SCHEMA))
                records.append(record)
            elif name.endswith(".img") and name[:-4] + ".json" not in names:
                logger.warning("image {} has no metadata record; leaving it alone", name)
        return records

    async def close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    async def check_health(self) -> None:
        await anyio.to_thread.run_sync(self._check_directory_sync)

    def _check_directory_sync(self) -> None:
        """Blocking: the directory is the one locked at start-up, and writable."""
        self._same_directory_sync()
        if not os.access(self._dir, os.W_OK | os.X_OK):
            raise errors.Unavailable(f"the loopfile directory {self._dir} is not writable")

    # -- space --------------------------------------------------------------
    def _uses_sync(self, records: list[ImageRecord]) -> dict[str, space.ImageUse]:
        """Blocking: what each volume's image holds now (sizes; shared extents where copies are reflinks)."""
        found = files.sizes({r.volume_id: self._image(r.volume_id) for r in records})
        uses = {}
        for record in records:
            size = found[record.volume_id]
            shared = reflink.shared_bytes_sync(self._image(record.volume_id)) if self.reflink_copies and size else 0
            uses[record.volume_id] = space.ImageUse(
                capacity_bytes=record.capacity_bytes, size_bytes=size[0] if size else 0,
                allocated_bytes=size[1] if size else 0, shared_bytes=shared, thin=record.thin,
                present=size is not None)
        return uses

    async def _measure(self, records: list[ImageRecord]) -> tuple[dict[str, space.ImageUse], int]:
        """Each volume's use of its image, and the free bytes of the image directory's filesystem."""
        def measure() -> tuple[dict[str, space.ImageUse], int]:
            self._same_directory_sync()  # never measure, nor then write, a filesystem that is not the pool's
            return self._uses_sync(records), files.free_bytes(self._dir)

        return await anyio.to_thread.run_sync(measure)

    async def _measure_available(self) -> int:
        uses, free = await self._measure(list(self._records.values()))
        return space.available_bytes(free, uses.values(), self._ratio)

    async def _allocated(self, path: str, what: str) -> int:
        """Bytes the file at ``path`` has allocated; PreconditionFailed naming ``what`` when it is missing."""
        found = (await anyio.to_thread.run_sync(files.sizes, {path: path}))[path]
        if found is None:
            raise errors.PreconditionFailed(f"the image file of {what} is missing ({path}): its data is gone")
        return found[1]

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
            held_data=source is not None,
        )
        what = f"{'thin' if thin else 'thick'} volume {spec.name!r} of {size} bytes"
        if source is None:
            async with self._space.hold(space.volume_cost(size, thin, self._ratio), what):
                # The whole creation is one worker-thread hop: intent record, image, ready record.
                await anyio.to_thread.run_sync(self._create_files, record)
                self._records[volume_id] = replace(record, state=READY)
        else:
            allocated = await self._allocated(source.path, self._describe(spec.source))
            cost = space.copy_cost(size, allocated, thin, self._ratio,
                                   shares_live_volume=self.reflink_copies and bool(source.volume_id))
            async with self._space.hold(cost, what):
                await self._copy_into_volume(record, source)
                self._records[volume_id] = replace(record, state=READY)
        logger.debug("created {} volume {} of {} bytes", "thin" if thin else "thick", volume_id, size)
        return self._records[volume_id].to_volume()

    async def _copy_into_volume(self, record: ImageRecord, source: _CopySource) -> None:
        volume_id = record.volume_id
        await anyio.to_thread.run_sync(write_record, self._meta(volume_id), record.to_json())
        fault_point("create.after_meta")
        try:
            await self._copy_consistent(source, self._image(volume_id))
            await anyio.to_thread.run_sync(
                lambda: files.grow_image(self._image(volume_id), record.capacity_bytes, allocate=not record.thin))
            fault_point("create.after_image")
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id),
                                           replace(record, state=READY).to_json())
            fault_point("create.after_ready")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove_files(volume_id)
            raise

    def _create_files(self, record: ImageRecord) -> None:
        """Blocking: make the pending image, write the ready record, then publish the image's name.

        Three fsyncs, two journal commits: the record's fsync commits the image's allocation with it, so the
        image's own fsync that follows finds nothing left to commit; then the directory, after both renames.
        Any failure removes what this call wrote; a crash leaves ``.tmp-<id>.img``, which start-up removes with
        the record.
        """
        image, pending = self._image(record.volume_id), self._pending_image(record.volume_id)
        if files.exists(image):  # an image without a record: not ours to overwrite
            raise FileExistsError(errno.EEXIST, "an image without a metadata record is in the way", image)
        files.create_image(pending, record.capacity_bytes, allocate=not record.thin)
        try:
            fault_point("create.after_image")
            write_record(self._meta(record.volume_id), replace(record, state=READY).to_json(), sync_directory=False)
            fault_point("create.after_meta")
            files.fsync_path(pending)
            os.rename(pending, image)
            files.fsync_directory(self._dir)
            fault_point("create.after_ready")
        except BaseException:
            files.remove([pending])
            self._remove_files_sync(record.volume_id)
            raise

    @staticmethod
    def _existing(record: ImageRecord) -> Existing:
        return Existing(record.volume_id, record.name, record.capacity_bytes, record.source,
                        {"provisioning": "thin" if record.thin else "thick"})

    def _remove_files_sync(self, volume_id: str) -> None:
        files.remove([self._image(volume_id), self._meta(volume_id)], sync=self._dir)

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
        logger.debug("deleted volume {}", volume_id)

    def _delete_files(self, volume_id: str) -> None:
        """Blocking: mark the image pending by renaming it (start-up finishes a crashed delete), remove both files.

        A rename needs no free space, so this works on a full filesystem too. One fsync, of the directory.
        """
        pending = self._pending_image(volume_id)
        files.rename_if_present(self._image(volume_id), pending)  # already gone: the record alone is left
        fault_point("delete.after_mark")
        files.remove([self._meta(volume_id), pending], sync=self._dir)

    async def get_volume(self, volume_id: str) -> Volume:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        return record.to_volume(await self.volume_health(volume_id))

    async def require_volume(self, volume_id: str) -> None:
        if volume_id not in self._records:
            raise errors.VolumeNotFound(volume_id)

    async def reads_as_zeros(self, volume_id: str) -> bool:
        """The image holds no data at all: ``SEEK_DATA`` from offset 0 finds none (holes and unwritten
        extents read as zeros; data still in the page cache counts as data)."""
        if volume_id not in self._records:
            return False
        return await anyio.to_thread.run_sync(holds_no_data, self._image(volume_id))

    async def may_hold_data(self, volume_id: str) -> bool:
        """Data was seen in the image before an attach or after a detach, or it was made as a copy (the
        record's ``held_data``, kept from then on)."""
        record = self._records.get(volume_id)
        return record is None or record.held_data

    async def _note_data(self, volume_id: str) -> None:
        """Remember, once and for good, that the image holds data now (checked when nothing of ours writes
        to it: before its attach, after its detach)."""
        record = self._records.get(volume_id)
        if record is None or record.held_data or await self.reads_as_zeros(volume_id):
            return
        marked = replace(record, held_data=True)
        try:
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id), marked.to_json())
        except errors.CapacityExhausted as exc:
            # Attach and detach must work on a full filesystem. The next record write keeps the mark; until
            # then it lives here, and a later attach of the detached image sees its data again anyway.
            logger.warning("volume {} holds data; cannot note it in its record yet: {}", volume_id, exc)
        if self._records.get(volume_id) is record:
            self._records[volume_id] = marked

    async def volume_health(self, volume_id: str) -> Condition:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        return (await self._conditions([record]))[volume_id]

    async def _conditions(self, records: list[ImageRecord]) -> dict[str, Condition]:
        """The condition of each volume: its image, the space behind it, and (attached) its filesystem."""
        uses, free = await self._measure(records)
        devices = {}
        for record in records:
            if record.volume_id in self._loops:
                device = await self.device_path(record.volume_id)
                if device is not None:
                    devices[record.volume_id] = device
        attached = await health.device_conditions(devices)
        return {r.volume_id: health.combine(image_condition(r, uses[r.volume_id], free, self._ratio),
                                            attached.get(r.volume_id)) for r in records}

    async def list_volumes(self) -> list[Volume]:
        records = [self._records[k] for k in sorted(self._records)]
        conditions = await self._conditions(records)
        return [r.to_volume(conditions[r.volume_id]) for r in records]

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        if parameters:
            parse_thin(parameters)
        available = await self._space.available()
        return Capacity(available_bytes=available, maximum_volume_bytes=available, minimum_volume_bytes=MIB)

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        new_size = round_up(required_bytes, MIB)
        if limit_bytes and new_size > limit_bytes:
            raise errors.OutOfRange(f"{new_size} bytes (rounded to MiB) exceeds the limit of {limit_bytes} bytes")
        if new_size <= record.capacity_bytes:
            return record.capacity_bytes
        growth = new_size - record.capacity_bytes
        async with self._space.hold(space.volume_cost(growth, record.thin, self._ratio),
                                    f"growing volume {volume_id} by {growth} bytes"):
            await anyio.to_thread.run_sync(
                lambda: files.grow_image(self._image(volume_id), new_size, allocate=not record.thin))
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
        if node_id != self.node_id:
            raise errors.NotFound(f"node {node_id!r} is unknown here: volume {volume_id} lives on {self.node_id!r}")
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

    # -- node ---------------------------------------------------------------
    async def attach(self, volume_id: str, readonly: bool) -> str:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        current = await self.device_path(volume_id)
        if current is not None:
            return current
        await self._allocated(self._image(volume_id), f"volume {volume_id}")
        await self._note_data(volume_id)
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

    async def attached_devices(self) -> list[str]:
        return sorted(d for d in [await self.device_path(v) for v in list(self._loops)] if d is not None)

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
        await self._note_data(volume_id)

    async def refresh_device_size(self, volume_id: str) -> int:
        device = await self.device_path(volume_id)
        if device is None:
            raise errors.PreconditionFailed(f"volume {volume_id} is not attached on this node")
        return await loop.refresh_capacity(device)

    # -- copies -------------------------------------------------------------
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

    @staticmethod
    def _describe(source: ContentSource | None) -> str:
        return f"{source.kind.value} {source.source_id}" if source is not None else ""

    async def _copy_consistent(self, source: _CopySource, target: str, point: str = "") -> reflink.CopyResult:
        """Copy ``source`` to the new file ``target``, the source volume held still for the copy (``point``: the
        fault point reached once it is)."""
        device = await self.device_path(source.volume_id) if source.volume_id else None
        async with held_still(source.volume_id, device, atomic_copy=self.reflink_copies):
            fault_point(point)
            try:
                result = await reflink.copy_image(source.path, target)
            except FileNotFoundError as exc:  # removed behind our back since it was checked
                raise errors.PreconditionFailed(f"the image file {source.path} of the copy's source is missing: "
                                                "its data is gone") from exc
        logger.info("copied {} to {} ({}, {} bytes moved)", source.path, target, result.method.value,
                    result.copied_bytes)
        return result

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
        allocated = await self._allocated(source.path, f"volume {source_volume_id}")
        record = SnapshotRecord(
            snapshot_id=snapshot_id, name=name, source_volume_id=source_volume_id, size_bytes=source.size_bytes,
            state=CREATING, created_at=datetime.now(UTC).isoformat(), block_size=source.block_size,
        )
        async with self._space.hold(space.snapshot_cost(allocated), f"snapshot {name!r} of volume {source_volume_id}"):
            await self._snapshots.begin(record)
            try:
                result = await self._copy_consistent(source, self._snap_image(snapshot_id), "snapshot.after_freeze")
                record = await self._snapshots.finish(replace(record, state=READY, method=result.method.value))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._snapshots.remove(snapshot_id)
                raise
        logger.info("created snapshot {} of volume {} ({})", snapshot_id, source_volume_id, record.method)
        return record.to_snapshot()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        if await self._snapshots.delete(snapshot_id):
            logger.info("deleted snapshot {}", snapshot_id)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        record = self._snapshots.get(snapshot_id)
        if record is None:
            raise errors.SnapshotNotFound(snapshot_id)
        return record.to_snapshot()

    async def list_snapshots(self) -> list[Snapshot]:
        return [r.to_snapshot() for r in self._snapshots.records()]
