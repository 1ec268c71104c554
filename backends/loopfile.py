"""The ``loopfile`` backend: each volume is an image file attached as a loop device.

Layout under ``--loopfile-dir``::

    <id>.img    the volume's data (sparse for thin, fallocated for thick)
    <id>.json   its metadata record (schema 1), written atomically

Crash safety comes from ordering. Create writes the record in state
``creating`` first, then the image, then the record in state ``ready``;
delete marks the record ``deleting``, removes the image, then the record.
At start-up a record left ``creating`` or ``deleting`` is finished off (the
caller was never told it succeeded, and its retry starts clean), and an image
without a record is reported and left alone: we never remove data we cannot
account for.

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
from typing import Any, ClassVar

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
    is_volume_id,
)
from backends.metadata import fsync_directory, load_record, write_record
from backends.system import loop
from backends.system.runner import Runner, require_tools
from backends.system.stats import filesystem_stats

SCHEMA = 1
MIB = 1 << 20
GIB = 1 << 30
DEFAULT_SIZE_BYTES = 1 * GIB
#: mkfs.xfs refuses filesystems smaller than 300 MiB.
MIN_FS_BYTES: Mapping[str, int] = {"xfs": 300 * MIB, "ext4": 16 * MIB, "": 16 * MIB}
MIN_BLOCK_BYTES = 1 * MIB

PARAM_PROVISIONING = "loopfile.localcsi.dev/provisioning"
#: Keys the external-provisioner adds on its own (``--extra-create-metadata``) and we accept silently.
IGNORED_PARAM_PREFIXES = ("csi.storage.k8s.io/",)
CONTEXT_BACKEND = "localcsi.dev/backend"
CONTEXT_PROVISIONING = "localcsi.dev/provisioning"

CREATING, READY, DELETING = "creating", "ready", "deleting"


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass(frozen=True)
class ImageRecord:
    """One volume's metadata record, as stored in ``<id>.json``."""

    volume_id: str
    name: str
    capacity_bytes: int
    thin: bool
    state: str
    created_at: str
    source: ContentSource | None = None
    published_node_ids: tuple[str, ...] = ()
    readonly_publish: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRecord:
        source = data.get("source")
        return cls(
            volume_id=str(data["volume_id"]),
            name=str(data["name"]),
            capacity_bytes=int(data["capacity_bytes"]),
            thin=bool(data["thin"]),
            state=str(data["state"]),
            created_at=str(data["created_at"]),
            source=ContentSource(SourceKind(source["kind"]), str(source["id"])) if source else None,
            published_node_ids=tuple(str(n) for n in data.get("published_node_ids", ())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "volume_id": self.volume_id,
            "name": self.name,
            "capacity_bytes": self.capacity_bytes,
            "thin": self.thin,
            "state": self.state,
            "created_at": self.created_at,
            "source": {"kind": self.source.kind.value, "id": self.source.source_id} if self.source else None,
            "published_node_ids": list(self.published_node_ids),
        }

    def to_volume(self, condition: Condition | None = None) -> Volume:
        return Volume(
            volume_id=self.volume_id,
            name=self.name,
            capacity_bytes=self.capacity_bytes,
            context={CONTEXT_BACKEND: "loopfile", CONTEXT_PROVISIONING: "thin" if self.thin else "thick"},
            source=self.source,
            published_node_ids=self.published_node_ids,
            condition=condition or Condition(),
        )


def parse_parameters(parameters: Mapping[str, str]) -> bool:
    """Return ``thin`` from StorageClass parameters; unknown keys are an error, not a silent default."""
    thin = False
    for key, value in parameters.items():
        if key == PARAM_PROVISIONING:
            if value not in ("thick", "thin"):
                raise errors.UnsupportedParameter(f"{PARAM_PROVISIONING} must be 'thick' or 'thin', not {value!r}")
            thin = value == "thin"
        elif not key.startswith(IGNORED_PARAM_PREFIXES):
            raise errors.UnsupportedParameter(f"unknown parameter {key!r} for the loopfile backend")
    return thin


class LoopfileBackend:
    """Volumes as image files on a local filesystem, attached as direct-I/O loop devices."""

    name: ClassVar[str] = "loopfile"

    def __init__(
        self,
        node_id: str,
        directory: str,
        runner: Runner,
        *,
        overcommit_ratio: float = 1.0,
        direct_io: bool = True,
    ) -> None:
        if overcommit_ratio < 1.0:
            raise errors.InvalidArgument("the loopfile overcommit ratio must be at least 1.0")
        self._node_id = node_id
        self._dir = os.path.abspath(directory)
        self._runner = runner
        self._ratio = overcommit_ratio
        self._direct_io = direct_io
        self._records: dict[str, ImageRecord] = {}
        self._loops: dict[str, loop.LoopDevice] = {}
        #: Bytes thin volumes may still claim from the filesystem (capacity minus what they hold).
        self._thin_allocated: dict[str, int] = {}
        self._thin_allocated_at = 0.0
        self._features = Features(
            block=True,
            filesystem=True,
            expansion=True,
            snapshots=False,
            clones=False,
            fs_types=("ext4", "xfs"),
            min_fs_bytes=MIN_FS_BYTES,
        )

    # -- paths --------------------------------------------------------------
    def _image(self, volume_id: str) -> str:
        return os.path.join(self._dir, volume_id + ".img")

    def _meta(self, volume_id: str) -> str:
        return os.path.join(self._dir, volume_id + ".json")

    @property
    def features(self) -> Features:
        return self._features

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def directory(self) -> str:
        return self._dir

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        require_tools(["mkfs.ext4", "mkfs.xfs", "blkid"])
        await anyio.to_thread.run_sync(self._prepare_directory)
        records = await anyio.to_thread.run_sync(self._scan_records)
        for record in records:
            if record.state == READY:
                self._records[record.volume_id] = record
            else:
                logger.warning(
                    "finishing interrupted {} of volume {}", "creation" if record.state == CREATING else "deletion",
                    record.volume_id,
                )
                await self._remove_files(record.volume_id)
        image_dir = self._dir + os.sep
        for dev in await loop.list_attached():
            if dev.backing_file.startswith(image_dir):
                volume_id = os.path.basename(dev.backing_file).removesuffix(".img")
                if volume_id in self._records:
                    self._loops[volume_id] = dev
                else:
                    logger.warning("loop device {} backs {}, which no volume owns", dev.path, dev.backing_file)
        logger.info(
            "loopfile backend ready: {} volumes, {} attached, directory {}", len(self._records), len(self._loops),
            self._dir,
        )

    def _prepare_directory(self) -> None:
        try:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
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
        for leftover in Path(self._dir).glob(".tmp-*.json"):
            leftover.unlink(missing_ok=True)

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

    async def close(self) -> None:
        return None

    async def check_health(self) -> None:
        ok = await anyio.to_thread.run_sync(os.access, self._dir, os.W_OK | os.X_OK)
        if not ok:
            raise errors.Unavailable(f"the loopfile directory {self._dir} is not writable")

    # -- controller ---------------------------------------------------------
    def _size_for(self, spec: VolumeSpec) -> int:
        minimum = MIN_FS_BYTES.get(spec.fs_type, MIN_BLOCK_BYTES) if spec.fs_type else MIN_BLOCK_BYTES
        wanted = spec.required_bytes or (min(DEFAULT_SIZE_BYTES, spec.limit_bytes) if spec.limit_bytes else
                                         DEFAULT_SIZE_BYTES)
        size = round_up(max(wanted, minimum), MIB)
        if spec.limit_bytes and size > spec.limit_bytes:
            raise errors.OutOfRange(
                f"the smallest volume this backend can make for the request is {size} bytes, "
                f"above the limit of {spec.limit_bytes} bytes"
            )
        return size

    async def create_volume(self, spec: VolumeSpec) -> Volume:
        thin = parse_parameters(spec.parameters)
        volume_id = spec.volume_id
        existing = self._records.get(volume_id)
        if existing is not None:
            return self._check_compatible(existing, spec, thin)
        if spec.source is not None:
            raise errors.InvalidArgument("creating a volume from a snapshot or volume is not supported yet")
        size = self._size_for(spec)
        await self._reserve(size, thin)
        record = ImageRecord(
            volume_id=volume_id, name=spec.name, capacity_bytes=size, thin=thin, state=CREATING,
            created_at=datetime.now(UTC).isoformat(),
        )
        await anyio.to_thread.run_sync(write_record, self._meta(volume_id), record.to_json())
        try:
            await anyio.to_thread.run_sync(self._make_image, self._image(volume_id), size, thin)
            record = replace(record, state=READY)
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id), record.to_json())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove_files(volume_id)
            raise
        self._records[volume_id] = record
        if thin:
            self._thin_allocated[volume_id] = 0
        logger.info("created {} volume {} of {} bytes", "thin" if thin else "thick", volume_id, size)
        return record.to_volume()

    def _check_compatible(self, existing: ImageRecord, spec: VolumeSpec, thin: bool) -> Volume:
        if existing.name != spec.name:
            raise errors.VolumeConflict(f"volume id {existing.volume_id} belongs to another name")
        if spec.required_bytes and existing.capacity_bytes < spec.required_bytes:
            raise errors.VolumeConflict(
                f"volume {spec.name!r} exists with {existing.capacity_bytes} bytes, less than the "
                f"{spec.required_bytes} bytes asked for"
            )
        if spec.limit_bytes and existing.capacity_bytes > spec.limit_bytes:
            raise errors.VolumeConflict(
                f"volume {spec.name!r} exists with {existing.capacity_bytes} bytes, more than the limit of "
                f"{spec.limit_bytes} bytes"
            )
        if existing.thin != thin:
            raise errors.VolumeConflict(f"volume {spec.name!r} exists with other provisioning parameters")
        if existing.source != spec.source:
            raise errors.VolumeConflict(f"volume {spec.name!r} exists with another content source")
        return existing.to_volume()

    @staticmethod
    def _make_image(path: str, size: int, thin: bool) -> None:
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
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise errors.CapacityExhausted(f"the loopfile filesystem has no room for {size} bytes") from exc
            raise
        finally:
            os.close(fd)
        fsync_directory(os.path.dirname(path))

    async def _reserve(self, size: int, thin: bool) -> None:
        capacity = await self.get_capacity({})
        needed = size / self._ratio if thin else size
        if needed > capacity.available_bytes:
            raise errors.CapacityExhausted(
                f"not enough space: {size} bytes asked, {capacity.available_bytes} bytes available on this node"
            )

    async def _remove_files(self, volume_id: str) -> None:
        def remove() -> None:
            for path in (self._image(volume_id), self._meta(volume_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fsync_directory(self._dir)

        await anyio.to_thread.run_sync(remove)

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
            deleting = replace(record, state=DELETING)
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id), deleting.to_json())
            await self._remove_files(volume_id)
        except BaseException:
            self._records[volume_id] = record
            raise
        self._thin_allocated.pop(volume_id, None)
        logger.info("deleted volume {}", volume_id)

    async def get_volume(self, volume_id: str) -> Volume:
        record = self._records.get(volume_id)
        if record is None:
            raise errors.VolumeNotFound(volume_id)
        return record.to_volume(await self._condition(record))

    async def list_volumes(self) -> list[Volume]:
        return [self._records[k].to_volume() for k in sorted(self._records)]

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        if parameters:
            parse_parameters(parameters)
        stats = await filesystem_stats(self._dir)
        outstanding = await self._thin_outstanding()
        available = max(0, int(stats.available_bytes - outstanding / self._ratio))
        # Volumes are whole MiB; never promise a partial one.
        available -= available % MIB
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
        if node_id not in record.published_node_ids:
            published = replace(record, published_node_ids=(*record.published_node_ids, node_id))
            await anyio.to_thread.run_sync(write_record, self._meta(volume_id), published.to_json())
            self._records[volume_id] = published
        return {}

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None:
        record = self._records.get(volume_id)
        if record is None or (node_id and node_id not in record.published_node_ids):
            return
        remaining = tuple(n for n in record.published_node_ids if node_id and n != node_id)
        unpublished = replace(record, published_node_ids=remaining)
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
        dev = await loop.attach(self._image(volume_id), readonly=readonly, direct_io=self._direct_io)
        self._loops[volume_id] = dev
        logger.info("attached volume {} as {} (direct I/O {})", volume_id, dev.path, dev.direct_io)
        return dev.path

    async def device_path(self, volume_id: str) -> str | None:
        dev = self._loops.get(volume_id)
        if dev is None:
            return None
        # Cheap check that the device still backs this image (someone may have detached it).
        current = await loop.get_device(dev.path)
        if current is None or current.backing_file != self._image(volume_id):
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

    # -- snapshots (not yet) ------------------------------------------------
    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot:
        raise errors.InvalidArgument("the loopfile backend does not support snapshots yet")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise errors.InvalidArgument("the loopfile backend does not support snapshots yet")

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        raise errors.SnapshotNotFound(snapshot_id)

    async def list_snapshots(self) -> list[Snapshot]:
        return []


def from_options(*, node_id: str, options: Mapping[str, Any], runner: Runner) -> LoopfileBackend:
    directory = options.get("loopfile_dir") or "/var/lib/localcsi/volumes"
    return LoopfileBackend(
        node_id,
        str(directory),
        runner,
        overcommit_ratio=float(options.get("loopfile_overcommit", 1.0) or 1.0),
        direct_io=not options.get("loopfile_buffered_io", False),
    )
