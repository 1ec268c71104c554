"""The ``rawdisk`` backend: each volume is one whole disk from an allow-list.

Only devices matching a ``--rawdisk-device`` glob are ever looked at, and of
those only the eligible ones (see :mod:`backends.rawdisk.inventory`) are ever
written. CreateVolume claims the best-fitting free disk (the smallest that
satisfies the capacity range) by writing our GPT with one partition named
after the volume (:mod:`backends.rawdisk.claim`); the volume's data lives in
that partition and its capacity is the partition's size. The driver keeps no
other state: at start-up, and again whenever the kernel reports a block device
appearing, changing or vanishing (a uevent listener started in :meth:`start`),
the inventory and the volume index are rebuilt from the disks themselves.

Attach exposes the partition range: the kernel's partition device when the
kernel parses partition tables (real nodes), otherwise a direct-I/O loop device
with offset and size limit over the disk (kernels without partition support).
Either way the device returned starts at the partition's first byte.

ControllerPublish records the publishing node in the claim's on-disk record
(the JSON block in the GPT alignment gap), so publications survive a restart
without any state directory. A claimed disk that disappears keeps its volume
in the index with an abnormal condition until it returns (under any name).

Expansion is impossible for a whole disk; ``Features(expansion=False)``.

Clones and restores (CreateVolume with a content source) claim another free
disk at least as large as the source, with a record in state ``copying``,
copy the source's partition onto the new partition block for block
(:mod:`backends.system.blockcopy`), and only then mark the record ``ready``:
until that moment the volume is neither listed nor returned, and a claim
still ``copying`` at start-up is wiped (the CO's retry starts over). A source
volume whose filesystem is mounted is frozen for the copy, so the copy is
consistent; a raw block source in use is refused (a copy could be torn).
Snapshots need somewhere honest to live: with ``--rawdisk-snapshot-dir`` each
is a sparse image of the partition in that directory
(:mod:`backends.rawdisk.snapshots`), and only then are the snapshot
capabilities advertised. Every copy costs the source's full size in I/O time.
A snapshot is admitted only when the directory can hold the whole partition
(its data is unknown until it is read) on top of what snapshots being copied
already hold (:mod:`backends.reservations`): one that is accepted never runs
out of room half-way because another was.

One instance owns the disks. Start-up locks the snapshot directory first, then
every disk it may write (free or claimed by us; ``flock`` of the device node,
:mod:`backends.system.storagelock`) before it repairs anything: a second
instance on the same disks stops with "in use by PID N". A disk that appears
later and is locked by another instance is excluded with that reason; a disk
that is no longer free or ours is let go.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import ClassVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
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
    published,
    snapshot_id_for,
)
from backends.copies import held_still, thaw_after_crash
from backends.faults import fault_point
from backends.provisioning import (
    CONTEXT_BACKEND,
    Existing,
    check_copy_range,
    check_repeat,
    check_snapshot_parameters,
    minimum_bytes,
    parse_parameters,
)
from backends.rawdisk import claim as rawdisk_claim
from backends.rawdisk.inventory import Disk, State, exclude_duplicate_claims, inspect_one, scan
from backends.rawdisk.options import RawdiskOptions
from backends.rawdisk.snapshots import CREATING, READY, SnapshotRecord
from backends.reservations import Reservations
from backends.snapshots import SnapshotStore
from backends.system import blockcopy, disks, files, gpt, loop, storagelock, uevents
from backends.system.runner import Runner, require_tools

CONTEXT_DISK = "localcsi.dev/disk"
#: How long hotplug events are gathered before one rescan.
RESCAN_DELAY = 0.2
#: How long attach waits for the kernel's partition device node to appear.
PARTITION_NODE_WAIT = 5.0


@dataclass(frozen=True)
class VolumeEntry:
    claim: rawdisk_claim.Claim
    disk: Disk
    present: bool = True

    def condition(self) -> Condition:
        """What the index knows of the volume's disk."""
        return Condition() if self.present else Condition(
            abnormal=True, message=f"disk {self.disk.path} ({self.disk.real_path}) of this volume has disappeared")

    def to_volume(self, condition: Condition | None = None) -> Volume:
        return Volume(
            volume_id=self.claim.volume_id,
            name=self.claim.record.name,
            capacity_bytes=self.claim.partition_bytes,
            context={CONTEXT_BACKEND: "rawdisk", CONTEXT_DISK: self.disk.path},
            source=self.claim.record.source,
            published_node_ids=self.claim.record.published_node_ids,
            condition=condition or self.condition(),
        )


@dataclass(frozen=True)
class CopySource:
    """Where a new volume's data comes from, and which volume (if any) to freeze while copying it."""

    data: blockcopy.Range
    #: The live source volume; "" for a snapshot image (nothing writes to it).
    volume_id: str
    #: Logical sector size the data was written with: the target disk's must not be larger.
    sector_bytes: int

    @property
    def size_bytes(self) -> int:
        return self.data.length


def check_parameters(parameters: Mapping[str, str]) -> None:
    """rawdisk has no StorageClass parameters of its own."""
    parse_parameters(parameters, "rawdisk", {})


def pick_disk(free: list[Disk], required_bytes: int, limit_bytes: int) -> Disk:
    """Best fit: the smallest free disk whose volume would satisfy the range (ties: allow-list order)."""
    big_enough = [d for d in free if d.capacity_bytes >= required_bytes]
    fitting = [d for d in big_enough if not limit_bytes or d.capacity_bytes <= limit_bytes]
    if fitting:
        return min(fitting, key=lambda d: d.capacity_bytes)
    if big_enough:
        raise errors.OutOfRange(
            f"every free disk large enough for {required_bytes} bytes is larger than the limit of {limit_bytes} "
            f"bytes (smallest: {min(d.capacity_bytes for d in big_enough)} bytes); a disk cannot be split"
        )
    largest = max((d.capacity_bytes for d in free), default=0)
    raise errors.CapacityExhausted(
        f"no free disk provides {required_bytes} bytes ({len(free)} free, largest {largest} bytes)"
    )


class RawdiskBackend:
    """Whole disks as volumes, claimed with an on-disk GPT mark."""

    name: ClassVar[str] = "rawdisk"

    def __init__(self, node_id: str, options: RawdiskOptions, runner: Runner, *, watch: bool = True) -> None:
        """``watch``: follow kernel uevents (tests that drive rescans themselves turn it off)."""
        options.validate()
        self.node_id = node_id
        self._patterns = options.devices
        self._runner = runner
        self._min_bytes = options.min_bytes
        snapshot_dir = options.snapshot_dir
        self._watch = watch
        self._disks: dict[str, Disk] = {}
        self._volumes: dict[str, VolumeEntry] = {}
        #: Claims still ``copying``: clones and restores in flight, or left behind by a crash.
        self._incomplete: dict[str, VolumeEntry] = {}
        #: Volume ids whose copy runs in this process now.
        self._copying: set[str] = set()
        self._snapshots = SnapshotStore(snapshot_dir, SnapshotRecord) if snapshot_dir else None
        #: Room in the snapshot directory held by snapshots being copied.
        self._snapshot_space = Reservations(self._snapshot_room)
        #: The snapshot directory's lock, and the locks of the disks this instance may write.
        self._dir_lock: storagelock.StorageLock | None = None
        self._disk_locks = storagelock.StorageLock("the rawdisk disks")
        #: Set by :meth:`lock_storage`: each scan locks the disks this instance may write.
        self._exclusive = False
        self._loops: dict[str, loop.LoopDevice] = {}
        #: Guards the pool's bookkeeping (inventory, index, reservations) and whole rescans; never held
        #: across a claim's or a wipe's I/O, which runs on a reserved disk outside it.
        self._lock = anyio.Lock()
        #: Disks being claimed or wiped right now: never picked, claimed or wiped by another call.
        self._reserved: set[str] = set()
        #: Volume ids being claimed or deleted right now.
        self._pending: set[str] = set()
        self._dirty = anyio.Event()
        #: Since the last rescan: a hotplug asked for a whole rescan, or these devices changed.
        self._hotplugged = False
        self._changed: set[str] = set()
        #: How many whole inventory scans, and single-disk re-reads after change uevents, have completed.
        self.scans = 0
        self.disk_reads = 0
        self._tg: TaskGroup | None = None
        self.features = options.features()

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        if not self._patterns:
            raise errors.Unavailable("the rawdisk backend needs at least one --rawdisk-device pattern")
        require_tools(["blkid", "mkfs.ext4", "mkfs.xfs"])
        try:
            async with self._lock:
                await self._rescan_locked(starting=True)
            await self._recover()
        except BaseException:
            await self.close()
            raise
        counts = {s: sum(1 for d in self._disks.values() if d.state is s) for s in State}
        logger.info("rawdisk backend ready: {} disks matched ({} free, {} claimed, {} excluded), {} attached",
                    len(self._disks), counts[State.FREE], counts[State.CLAIMED], counts[State.EXCLUDED],
                    len(self._loops))

    async def lock_storage(self) -> None:
        """Lock the snapshot directory now, and from now on every disk this instance may write, as each scan
        finds it (the first, in :meth:`start`, before any repair)."""
        if self._snapshots is not None and self._dir_lock is None:
            self._dir_lock = await anyio.to_thread.run_sync(self._lock_snapshot_dir, self._snapshots.directory)
        self._exclusive = True

    @staticmethod
    def _lock_snapshot_dir(directory: str) -> storagelock.StorageLock:
        try:
            files.ensure_directory(directory)
        except OSError as exc:
            raise errors.Unavailable(f"cannot create the rawdisk snapshot directory {directory}: {exc.strerror}") \
                from exc
        return storagelock.lock_directory(directory, f"the rawdisk snapshot directory {directory}")

    async def _recover(self) -> None:
        """With every lock held: find our partition views, finish what a crash interrupted, follow uevents."""
        wanted = {(e.disk.real_path, e.claim.partition_offset): vid for vid, e in self._volumes.items()}
        for dev in await loop.list_attached():
            volume_id = wanted.get((dev.backing_file, dev.offset))
            if volume_id is not None:
                self._loops[volume_id] = dev
        await self._finish_interrupted()
        if self._watch:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            await self._tg.start(self._listen)
            self._tg.start_soon(self._rescan_on_events)

    async def close(self) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        self._disk_locks.release()
        lock, self._dir_lock = self._dir_lock, None
        if lock is not None:
            lock.release()

    async def check_health(self) -> None:
        return None

    # -- inventory ----------------------------------------------------------
    async def rescan(self) -> None:
        """Rebuild the disk inventory and the volume index from the disks."""
        async with self._lock:
            await self._rescan_locked()

    async def rescan_disks(self, devices: set[str]) -> None:
        """Re-read only ``devices`` (real paths): those on the allow-list are read again, a known disk no longer
        on it leaves the inventory, any other device is ignored. A disk being claimed or wiped is left to the
        call that reserved it, which records its outcome."""
        async with self._lock:
            only = {d for d in devices if d not in self._reserved}
            if only:
                await self._rescan_locked(only)

    async def _rescan_locked(self, only: set[str] | None = None, *, starting: bool = False) -> None:
        found = await scan(self._runner, self._patterns, min_bytes=self._min_bytes, only=only)
        if only is not None:
            fresh = {d.real_path: d for d in found}
            kept = [fresh.pop(path, disk) for path, disk in self._disks.items() if path not in only or path in fresh]
            if len(kept) == len(self._disks) and not fresh and not found:
                return  # none of them was, or is, on the allow-list
            found = exclude_duplicate_claims(kept + list(fresh.values()))
        if self._exclusive:
            found = await self._hold_locks(found, starting=starting)
        self._disks = {d.real_path: d for d in found}
        seen: set[str] = set()
        for disk in found:
            if disk.claim is None:
                continue
            volume_id = disk.claim.volume_id
            seen.add(volume_id)
            if not disk.claim.record.ready:  # a clone or restore still copying: not a volume yet
                self._incomplete[volume_id] = VolumeEntry(disk.claim, disk)
                self._volumes.pop(volume_id, None)
                continue
            if self._volumes.get(volume_id, None) is None:
                logger.info("found volume {} on {}", volume_id, disk.path)
            self._volumes[volume_id] = VolumeEntry(disk.claim, disk)
            self._incomplete.pop(volume_id, None)
        for volume_id in [v for v in self._incomplete if v not in seen]:
            self._incomplete.pop(volume_id)
        for volume_id, entry in list(self._volumes.items()):
            if volume_id not in seen and entry.present:
                logger.warning("disk {} of volume {} has disappeared", entry.disk.path, volume_id)
                self._volumes[volume_id] = replace(entry, present=False)
        if only is None:
            self.scans += 1
        else:
            self.disk_reads += 1

    async def _hold_locks(self, found: list[Disk], *, starting: bool) -> list[Disk]:
        """Lock every disk this instance may write (free, or ours) and let go of the others. A disk another
        instance holds: at start-up the end of it (StorageInUse), later that disk's exclusion."""
        wanted = {d.real_path for d in found if d.state in (State.FREE, State.CLAIMED)}
        for path in [p for p in self._disk_locks.paths if p not in wanted]:
            self._disk_locks.drop(path)
        out = []
        for disk in found:
            kept = disk
            if disk.real_path in wanted and not self._disk_locks.holds(disk.real_path):
                try:
                    await anyio.to_thread.run_sync(self._disk_locks.add, disk.real_path, f"disk {disk.path}")
                except errors.StorageInUse as exc:
                    if starting:
                        raise
                    kept = replace(disk, state=State.EXCLUDED, claim=None,
                                   reason=f"is held by another localcsi instance: {exc.message}")
            out.append(kept)
        return out

    def inventory(self) -> list[Disk]:
        return list(self._disks.values())

    async def _listen(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                async with uevents.uevent_monitor("block") as events:
                    if not started:
                        started = True
                        task_status.started()
                    async for event in events:
                        if event.devtype == "disk" and event.action in ("add", "remove", "change"):
                            logger.debug("uevent {} {}", event.action, event.devname)
                            self._note(event)
            except Exception as exc:  # the listener must outlive a broken socket
                logger.warning("uevent listener failed ({}); restarting in 1 s", exc)
                if not started:
                    started = True
                    task_status.started()
                await anyio.sleep(1.0)

    def _note(self, event: uevents.Uevent) -> None:
        """A change (new partition table, size, medium; a loop device attached or detached) re-reads that one
        device. A disk added or removed rescans them all: its allow-listed name (a by-id link, say) may not be
        the kernel's."""
        if event.action == "change" and event.devname:
            self._changed.add(os.path.realpath(event.device))
        else:
            self._hotplugged = True
        self._dirty.set()

    async def _rescan_on_events(self) -> None:
        while True:
            await self._dirty.wait()
            await anyio.sleep(RESCAN_DELAY)
            self._dirty = anyio.Event()
            whole, changed = self._hotplugged, self._changed
            self._hotplugged, self._changed = False, set()
            try:
                if whole:
                    await self.rescan()
                elif changed:
                    await self.rescan_disks(changed)
            except Exception as exc:
                logger.warning("disk rescan failed: {}", exc)

    # -- controller ---------------------------------------------------------
    def _required(self, spec: VolumeSpec) -> int:
        return max(spec.required_bytes, minimum_bytes(spec.fs_type, 1))

    async def create_volume(self, spec: VolumeSpec) -> Volume:
        check_parameters(spec.parameters)
        existing = self._volumes.get(spec.volume_id)
        if existing is not None and spec.volume_id not in self._pending:
            return self._check_compatible(existing, spec)
        if spec.volume_id in self._copying:
            raise errors.Busy(f"volume {spec.volume_id} is still being copied; retry")
        source = self._resolve_source(spec.source) if spec.source is not None else None
        required = self._required(spec) if source is None else self._required_for_copy(spec, source.size_bytes)
        async with self._lock:
            existing = self._volumes.get(spec.volume_id)
            if existing is not None and spec.volume_id not in self._pending:
                return self._check_compatible(existing, spec)
            self._begin(spec.volume_id)  # busy while this volume is being deleted
        try:
            await self._drop_incomplete(spec.volume_id)
            async with self._lock:
                free = [d for d in self._disks.values() if d.state is State.FREE and d.real_path not in self._reserved
                        and (source is None or d.sector_bytes <= source.sector_bytes)]
                disk = pick_disk(free, required, spec.limit_bytes)
                self._reserved.add(disk.real_path)
            try:
                entry = await self._claim(disk, spec, copying=source is not None)
            finally:
                self._reserved.discard(disk.real_path)
        finally:
            self._pending.discard(spec.volume_id)
        logger.info("volume {} claimed {} ({} bytes)", spec.volume_id, disk.path, entry.claim.partition_bytes)
        if source is not None:
            entry = await self._fill(entry, source)
        return entry.to_volume()

    def _begin(self, volume_id: str) -> None:
        """Mark a volume as being claimed or deleted (pool lock held); a second call meanwhile is busy."""
        if volume_id in self._pending:
            raise errors.Busy(f"volume {volume_id} is being created or deleted; retry")
        self._pending.add(volume_id)

    def _resolve_source(self, source: ContentSource) -> CopySource:
        """The bytes a content source names; unknown sources are NOT_FOUND."""
        if source.kind is SourceKind.SNAPSHOT:
            snap = self._snapshots.get(source.source_id) if self._snapshots is not None else None
            if snap is None or self._snapshots is None:
                raise errors.SnapshotNotFound(source.source_id)
            image = blockcopy.Range(self._snapshots.image(snap.snapshot_id), 0, snap.size_bytes,
                                    blockcopy.Kind.IMAGE)
            return CopySource(image, "", snap.sector_bytes)
        entry = self._volumes.get(source.source_id)
        if entry is None:
            raise errors.VolumeNotFound(source.source_id)
        if not entry.present:
            raise errors.Unavailable(f"disk {entry.disk.path} of source volume {source.source_id} is not present")
        return CopySource(self._partition_range(entry), entry.claim.volume_id, entry.disk.sector_bytes)

    @staticmethod
    def _partition_range(entry: VolumeEntry) -> blockcopy.Range:
        return blockcopy.Range(entry.disk.real_path, entry.claim.partition_offset, entry.claim.partition_bytes,
                               blockcopy.Kind.DEVICE)

    def _required_for_copy(self, spec: VolumeSpec, source_bytes: int) -> int:
        """A clone or restore needs a disk at least the source's size; asking for less is OUT_OF_RANGE."""
        check_copy_range(spec, source_bytes)
        return max(self._required(spec), source_bytes)

    async def _fill(self, entry: VolumeEntry, source: CopySource) -> VolumeEntry:
        """Copy the source onto the claimed disk, then mark it ready; on any failure give the disk back."""
        volume_id = entry.claim.volume_id
        self._copying.add(volume_id)
        try:
            target = replace(self._partition_range(entry), length=source.size_bytes)
            async with self._held_still(source.volume_id):
                stats = await blockcopy.copy(source.data, target)
            logger.info("copied {} bytes ({} of data) onto {} in {:.1f} s ({:.0f} MiB/s)", stats.bytes_total,
                        stats.bytes_data, entry.disk.path, stats.seconds, stats.mib_per_second)
            partition = await self._partition_device(entry)
            if partition is not None and await anyio.Path(partition).exists():
                # The copy went through the whole disk; the kernel's partition device must not serve older pages.
                await anyio.to_thread.run_sync(blockcopy.drop_cache, partition)
            fault_point("rawdisk.create.after_copy")
            record = replace(entry.claim.record, state=rawdisk_claim.READY)
            await anyio.to_thread.run_sync(rawdisk_claim.update_record, entry.disk.real_path, record)
            ready = replace(entry, claim=entry.claim.with_record(record))
            async with self._lock:
                self._incomplete.pop(volume_id, None)
                self._volumes[volume_id] = ready
            return ready
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self._drop_incomplete(volume_id)
                except Exception as exc:
                    logger.error("cannot give back the disk of unfinished volume {}: {}", volume_id, exc)
            raise
        finally:
            self._copying.discard(volume_id)

    async def _drop_incomplete(self, volume_id: str) -> None:
        """Wipe the disk of a clone or restore that never finished (without the pool lock held)."""
        async with self._lock:
            entry = self._incomplete.get(volume_id)
            if entry is None:
                return
            self._reserve(entry.disk)
        await self._wipe_and_release(entry, self._incomplete)
        logger.info("unfinished volume {} removed; disk {} returned to the pool", volume_id, entry.disk.path)

    def _reserve(self, disk: Disk) -> None:
        """Keep every other call off a disk while it is claimed or wiped (pool lock held)."""
        if disk.real_path in self._reserved:
            raise errors.Busy(f"disk {disk.path} is being claimed or wiped; retry")
        self._reserved.add(disk.real_path)

    async def _wipe_and_release(self, entry: VolumeEntry, index: dict[str, VolumeEntry]) -> None:
        """Wipe a disk the caller reserved, return it to the pool, and drop its entry from ``index``."""
        try:
            wiped = await self._wipe(entry)
            async with self._lock:
                self._disks[wiped.real_path] = wiped
                index.pop(entry.claim.volume_id, None)
        finally:
            self._reserved.discard(entry.disk.real_path)

    async def _wipe(self, entry: VolumeEntry) -> Disk:
        """Wipe a reserved disk after checking it still carries the volume; returns the disk as it is now."""
        disk = entry.disk
        facts = await self._facts(disk)
        current = await self._classify(disk, facts)
        if current.claim is None or current.claim.volume_id != entry.claim.volume_id:
            raise errors.PreconditionFailed(
                f"disk {disk.path} no longer carries volume {entry.claim.volume_id}: it {current.reason}")
        await anyio.to_thread.run_sync(
            lambda: rawdisk_claim.wipe(disk.real_path, entry.claim, disk.size_bytes, discard=disk.discard))
        await anyio.to_thread.run_sync(gpt.reread_partitions, disk.real_path)
        # The facts read just before the wipe still hold (the disk was ours, opened exclusively): only its
        # contents changed, so only those are read again (and probed: leftovers may still carry a signature).
        return await self._classify(disk, facts)

    @contextlib.asynccontextmanager
    async def _held_still(self, volume_id: str) -> AsyncIterator[None]:
        """Hold a source volume still for a copy (a block-for-block copy is never atomic)."""
        device = await self.device_path(volume_id) if volume_id else None
        async with held_still(volume_id, device):
            yield

    async def _finish_interrupted(self) -> None:
        """At start-up: thaw what a crashed copy may have left frozen, remove unfinished clones and snapshots."""
        interrupted = await self._snapshots.start() if self._snapshots is not None else []
        sources = {e.claim.record.source.source_id for e in self._incomplete.values()
                   if e.claim.record.source is not None and e.claim.record.source.kind is SourceKind.VOLUME}
        sources |= {s.source_volume_id for s in interrupted if s.state == CREATING}
        for volume_id in sorted(sources):
            await thaw_after_crash(volume_id, await self.device_path(volume_id))
        for snap in interrupted:
            logger.warning("removing unfinished snapshot {} ({})", snap.snapshot_id, snap.state)
            if self._snapshots is not None:
                await self._snapshots.remove(snap.snapshot_id)
        for volume_id in list(self._incomplete):
            logger.warning("removing unfinished clone or restore {}", volume_id)
            try:
                await self._drop_incomplete(volume_id)
            except errors.BackendError as exc:
                logger.error("cannot wipe unfinished volume {}: {}", volume_id, exc)

    @staticmethod
    def _check_compatible(existing: VolumeEntry, spec: VolumeSpec) -> Volume:
        claim = existing.claim
        check_repeat(Existing(claim.volume_id, claim.record.name, claim.partition_bytes, claim.record.source), spec)
        return existing.to_volume()

    async def _claim(self, disk: Disk, spec: VolumeSpec, *, copying: bool = False) -> VolumeEntry:
        """Re-check a reserved disk right before writing (it may have changed since the scan), then claim it."""
        facts = await self._facts(disk)
        fresh = await self._classify(disk, facts)
        if fresh.state is not State.FREE:
            async with self._lock:
                self._disks[disk.real_path] = fresh
            raise errors.Busy(f"disk {disk.path} changed since it was inventoried ({fresh.reason}); retry")
        layout = gpt.Layout(fresh.size_bytes, fresh.sector_bytes)
        record = rawdisk_claim.Record(spec.volume_id, spec.name, datetime.now(UTC).isoformat(), source=spec.source,
                                      state=rawdisk_claim.COPYING if copying else rawdisk_claim.READY)
        await anyio.to_thread.run_sync(rawdisk_claim.write, fresh.real_path, layout, record)
        await anyio.to_thread.run_sync(gpt.reread_partitions, fresh.real_path)
        claimed = await self._classify(disk, facts)  # reads the claim back; a claimed disk is not probed
        if claimed.claim is None or claimed.claim.volume_id != spec.volume_id:
            raise errors.SystemFailure(f"claiming {disk.path} did not stick: it now {claimed.reason}")
        entry = VolumeEntry(claimed.claim, claimed)
        async with self._lock:
            self._disks[disk.real_path] = claimed
            if copying:
                self._incomplete[spec.volume_id] = entry
                self._copying.add(spec.volume_id)
            else:
                self._volumes[spec.volume_id] = entry
        return entry

    @staticmethod
    async def _facts(disk: Disk) -> disks.DiskFacts:
        """What sysfs, mountinfo and /proc/swaps say about this one disk now."""
        facts = await anyio.to_thread.run_sync(disks.inspect_all, [disk.real_path])
        return facts[disk.real_path]

    async def _classify(self, disk: Disk, facts: disks.DiskFacts) -> Disk:
        """The disk's state from its contents now (our claim read back; probed with libblkid only if blank)."""
        match = disks.Match(disk.pattern, disk.path, disk.real_path)
        return await inspect_one(self._runner, match, facts, min_bytes=self._min_bytes)

    async def delete_volume(self, volume_id: str) -> None:
        if volume_id in self._copying:
            raise errors.Busy(f"volume {volume_id} is still being copied; retry")
        entry = self._volumes.get(volume_id)
        if entry is None:
            if volume_id in self._incomplete:  # an unfinished clone or restore the CO gave up on
                await self._drop_incomplete(volume_id)
            return
        await self._check_unused(entry)
        async with self._lock:
            entry = self._volumes.get(volume_id)
            if entry is None:
                return
            if not entry.present:
                raise errors.PreconditionFailed(
                    f"disk {entry.disk.path} of volume {volume_id} is not present, so it cannot be wiped; "
                    "reconnect it, or wipe it by hand and delete the volume again")
            disk = entry.disk
            self._reserve(disk)
            self._pending.add(volume_id)
        try:
            await self._wipe_and_release(entry, self._volumes)
        finally:
            self._pending.discard(volume_id)
        logger.info("volume {} deleted; disk {} wiped and returned to the pool", volume_id, disk.path)

    async def _check_unused(self, entry: VolumeEntry) -> None:
        """A loop view must be detached (unstaged); a kernel partition device must not be mounted."""
        volume_id = entry.claim.volume_id
        device = await self.device_path(volume_id)
        if device is None:
            return
        if volume_id in self._loops:
            raise errors.VolumeInUse(f"volume {volume_id} is still attached as {device}; unstage it first")
        users = await paths.device_in_use(device)
        if users:
            raise errors.VolumeInUse(f"volume {volume_id} ({device}) is still mounted at {', '.join(users)}")

    async def get_volume(self, volume_id: str) -> Volume:
        entry = self._volumes.get(volume_id)
        if entry is None:
            raise errors.VolumeNotFound(volume_id)
        return entry.to_volume(await self.volume_health(volume_id))

    async def require_volume(self, volume_id: str) -> None:
        if volume_id not in self._volumes:
            raise errors.VolumeNotFound(volume_id)

    async def reads_as_zeros(self, volume_id: str) -> bool:
        return False  # a disk's contents are whatever it holds: the probe always decides

    async def may_hold_data(self, volume_id: str) -> bool:
        """A clone or restore holds its source's data; of any other volume the claim keeps no history (its
        disk was wiped when its last volume was deleted), so the probe decides."""
        entry = self._volumes.get(volume_id)
        return entry is None or entry.claim.record.source is not None

    async def volume_health(self, volume_id: str) -> Condition:
        entry = self._volumes.get(volume_id)
        if entry is None:
            raise errors.VolumeNotFound(volume_id)
        return (await self._conditions([entry]))[volume_id]

    async def _conditions(self, entries: list[VolumeEntry]) -> dict[str, Condition]:
        """Each volume's condition: its disk present, and (attached) its device and filesystem."""
        devices = {}
        for entry in entries:
            device = await self.device_path(entry.claim.volume_id) if entry.present else None
            if device is not None:
                devices[entry.claim.volume_id] = device
        attached = await health.device_conditions(devices)
        return {e.claim.volume_id: health.combine(e.condition(), attached.get(e.claim.volume_id)) for e in entries}

    async def list_volumes(self) -> list[Volume]:
        entries = [self._volumes[k] for k in sorted(self._volumes)]
        conditions = await self._conditions(entries)
        return [e.to_volume(conditions[e.claim.volume_id]) for e in entries]

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        check_parameters(parameters)
        sizes = [d.capacity_bytes for d in self._disks.values() if d.state is State.FREE]
        return Capacity(available_bytes=sum(sizes), maximum_volume_bytes=max(sizes, default=0),
                        minimum_volume_bytes=min(sizes, default=0))

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        entry = self._volumes.get(volume_id)
        if entry is None:
            raise errors.VolumeNotFound(volume_id)
        if required_bytes <= entry.claim.partition_bytes:
            return entry.claim.partition_bytes
        raise errors.OutOfRange(f"volume {volume_id} is a whole disk of {entry.claim.partition_bytes} bytes; "
                                "it cannot grow")

    async def publish_volume(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        entry = self._present(volume_id)
        if node_id != self.node_id:
            raise errors.NotFound(f"node {node_id!r} is unknown here: volume {volume_id} lives on {self.node_id!r}")
        record = entry.claim.record
        change = published(record.published_node_ids, record.readonly_node_ids, node_id, readonly)
        if change is not None:
            await self._update_record(entry, replace(record, published_node_ids=change[0],
                                                     readonly_node_ids=change[1]))
        return {}

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None:
        entry = self._volumes.get(volume_id)
        if entry is None or not entry.present:
            return
        record = entry.claim.record
        remaining = tuple(n for n in record.published_node_ids if node_id and n != node_id)
        if remaining != record.published_node_ids:
            await self._update_record(entry, replace(
                record, published_node_ids=remaining,
                readonly_node_ids=tuple(n for n in record.readonly_node_ids if n in remaining)))

    async def _update_record(self, entry: VolumeEntry, record: rawdisk_claim.Record) -> None:
        if not record.volume_id:
            record = replace(record, volume_id=entry.claim.volume_id)
        await anyio.to_thread.run_sync(rawdisk_claim.update_record, entry.disk.real_path, record)
        claim = entry.claim.with_record(record)
        self._volumes[claim.volume_id] = replace(entry, claim=claim)

    def _present(self, volume_id: str) -> VolumeEntry:
        entry = self._volumes.get(volume_id)
        if entry is None:
            raise errors.VolumeNotFound(volume_id)
        if not entry.present:
            raise errors.Unavailable(f"disk {entry.disk.path} of volume {volume_id} is not present on this node")
        return entry

    # -- node ---------------------------------------------------------------
    async def _partition_device(self, entry: VolumeEntry) -> str | None:
        """The kernel's device for our partition, when it shows one that matches the claim."""
        return await anyio.to_thread.run_sync(disks.partition_matching, entry.disk.name, 1,
                                              entry.claim.partition_offset, entry.claim.partition_bytes)

    async def attach(self, volume_id: str, readonly: bool) -> str:
        entry = self._present(volume_id)
        current = await self.device_path(volume_id)
        if current is not None:
            return current
        partition = await self._partition_device(entry)
        if partition is not None:
            with anyio.move_on_after(PARTITION_NODE_WAIT):
                # devtmpfs creates the node soon after the partition scan; there is nothing to wait on.
                while not await anyio.Path(partition).exists():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            if await anyio.Path(partition).exists():
                logger.info("volume {} is the kernel's partition {}", volume_id, partition)
                return partition
        # The view keeps the disk's logical block size, so a filesystem made through it also mounts
        # from the kernel's partition device on a kernel that parses partitions.
        dev = await loop.attach(entry.disk.real_path, readonly=readonly, direct_io=True,
                                offset=entry.claim.partition_offset, sizelimit=entry.claim.partition_bytes,
                                block_size=entry.disk.sector_bytes)
        self._loops[volume_id] = dev
        logger.info("volume {} attached as {} (partition range of {}, direct I/O {})", volume_id, dev.path,
                    entry.disk.path, dev.direct_io)
        return dev.path

    async def device_path(self, volume_id: str) -> str | None:
        entry = self._volumes.get(volume_id)
        if entry is None:
            return None
        dev = self._loops.get(volume_id)
        if dev is not None:
            current = await loop.get_device(dev.path)
            if current is not None and current.backing_file == entry.disk.real_path and \
                    current.offset == entry.claim.partition_offset:
                return dev.path
            self._loops.pop(volume_id, None)
        if entry.present:
            partition = await self._partition_device(entry)
            if partition is not None and await anyio.Path(partition).exists():
                return partition
        return None

    async def detach(self, volume_id: str) -> None:
        dev = self._loops.get(volume_id)
        device = await self.device_path(volume_id)
        if device is None or dev is None or device != dev.path:
            return  # nothing attached, or the kernel's partition device, which needs no undoing
        users = await paths.device_in_use(device)
        if users:
            raise errors.VolumeInUse(f"{device} of volume {volume_id} is still mounted at {', '.join(users)}")
        await loop.detach(device)
        self._loops.pop(volume_id, None)
        logger.info("volume {} detached from {}", volume_id, device)

    async def refresh_device_size(self, volume_id: str) -> int:
        entry = self._present(volume_id)
        return entry.claim.partition_bytes

    async def attached_devices(self) -> list[str]:
        """Our loop views and the kernel partition devices of our claims, as far as they exist now."""
        found = [await self.device_path(v) for v in list(self._volumes)]
        return sorted(d for d in found if d is not None)


    # -- snapshots ----------------------------------------------------------
    async def _snapshot_room(self) -> int:
        """Free bytes of the snapshot directory's filesystem (nothing else there is promised)."""
        return await anyio.to_thread.run_sync(files.free_bytes, self._store().directory)

    def _store(self) -> SnapshotStore[SnapshotRecord]:
        if self._snapshots is None:
            raise errors.InvalidArgument("the rawdisk backend keeps snapshots only with --rawdisk-snapshot-dir")
        return self._snapshots

    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot:
        store = self._store()
        check_snapshot_parameters(parameters, "rawdisk")
        snapshot_id = snapshot_id_for(name)
        existing = store.get(snapshot_id)
        if existing is not None:
            if existing.name != name or existing.source_volume_id != source_volume_id:
                raise errors.SnapshotConflict(f"snapshot {name!r} exists with another source volume")
            return existing.to_snapshot()
        entry = self._present(source_volume_id)
        source = self._partition_range(entry)
        record = SnapshotRecord(snapshot_id, name, source_volume_id, source.length, CREATING,
                                datetime.now(UTC).isoformat(), sector_bytes=entry.disk.sector_bytes)
        # The partition's data is known only once it is read: hold room for all of it.
        async with self._snapshot_space.hold(source.length, f"snapshot {name!r} of volume {source_volume_id} "
                                                            f"(up to its whole partition) in {store.directory}"):
            await store.begin(record)
            try:
                image = blockcopy.Range(store.image(snapshot_id), 0, source.length, blockcopy.Kind.IMAGE)
                async with self._held_still(source_volume_id):
                    fault_point("rawdisk.snapshot.after_freeze")
                    stats = await blockcopy.copy(source, image)
                record = await store.finish(replace(record, state=READY, data_bytes=stats.bytes_data))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await store.remove(snapshot_id)
                raise
        logger.info("snapshot {} of volume {}: {} bytes, {} of data, in {:.1f} s ({:.0f} MiB/s)", snapshot_id,
                    source_volume_id, stats.bytes_total, stats.bytes_data, stats.seconds, stats.mib_per_second)
        return record.to_snapshot()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        if await self._store().delete(snapshot_id):
            logger.info("deleted snapshot {}", snapshot_id)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        record = self._snapshots.get(snapshot_id) if self._snapshots is not None else None
        if record is None:
            raise errors.SnapshotNotFound(snapshot_id)
        return record.to_snapshot()

    async def list_snapshots(self) -> list[Snapshot]:
        return [r.to_snapshot() for r in self._snapshots.records()] if self._snapshots is not None else []
