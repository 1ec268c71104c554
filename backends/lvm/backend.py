"""The ``lvm`` backend: each volume is a logical volume in one volume group.

``--backend lvm --lvm-vg VG [--lvm-thinpool POOL] [--lvm-thin-overprovision R]``

Provisioning. The StorageClass parameter ``lvm.localcsi.dev/type`` chooses
``thick`` (a linear LV; its first blocks zeroed and old signatures wiped) or
``thin`` (a thin LV in ``POOL``). Without the parameter a volume is thin when a
thin pool is configured and thick otherwise; ``thin`` without a pool is an
UnsupportedParameter. Sizes round up to whole extents and the real size is
reported.

Naming and state. The LV name *is* the volume id (``lcv-`` + 32 hex digits, a
pure function of the CSI name, well within LVM's 127 characters and charset).
Everything else lives in LV tags, so the driver keeps no other state and a new
instance finds every volume from LVM alone::

    localcsi.dev/owner=localcsi      created by us (an LV without it is never touched)
    localcsi.dev/format=1            tag format version
    localcsi.dev/name=<CSI name>     or localcsi.dev/name.hex=<hex> when the name has
                                     characters LVM tags cannot hold
    localcsi.dev/published=<node>    (or published.hex=) set by ControllerPublish
    localcsi.dev/published-ro=<node> (or published-ro.hex=) when that publish is read-only
    localcsi.dev/content-source=snapshot:<id> | volume:<id>   a restored or cloned volume

A snapshot is an LV named by its snapshot id (``lcs-`` + 32 hex digits, from
``snapshot_id_for(name)``) with the owner and format tags and::

    localcsi.dev/snapshot-name=<CSI name>   (or .hex=)
    localcsi.dev/source-volume=<volume id>
    localcsi.dev/created=<ISO 8601 UTC time>

Capacity. Thick: the VG's free extents (a linear LV may span every PV, so the
largest volume is all of it). Thin: ``pool size × overprovision ratio`` minus the
virtual sizes of every thin LV already in the pool (TopoLVM's accounting): a
ratio of 1.0 never overcommits the pool. Thin creation and expansion are checked
against it under one lock (the pool is a shared resource) and refused with
CapacityExhausted beyond it.

Attachment. ``attach`` activates the LV (``lvchange -ay``) and returns
``/dev/<vg>/<lv>``, recreating the link (``vgmknodes``) or falling back to the
``/dev/mapper`` node when there is no udev. ``detach`` deactivates it
(``lvchange -an``): an LV is active exactly while it is staged on this node, so a
deleted or moved volume leaves no device-mapper device behind, and ``attach``/
``detach`` answer the same after a driver restart. For the same reason thin LVs are
created inactive (``-an``) and linear ones, which lvcreate activates to zero
their start, are deactivated right after.

Commands. Every LVM command costs a process and a metadata scan (tens of ms on
hardware, ~300 ms under TCG), so none runs unless LVM must change or only LVM
can answer. An in-memory index (volume id → LV record) is loaded by one ``lvs``
at start, refreshed by ``list_volumes`` and kept in step by our own create,
delete, expand and tag changes; a miss asks LVM (another instance may have made
the volume), and a command that finds the LV gone drops it. Whether an LV is
active is never taken from the index: it is active while its device-mapper
device exists (``/dev/<vg>/<lv>`` or its ``/dev/mapper`` node, a block device
whose sysfs ``dm/name`` is the LV's). So ``device_path``, ``refresh_device_size``,
``attach`` of an attached volume, ``detach`` of an active one (bar the
``lvchange -an``) and Controller(Un)Publish (bar the tag change) ask LVM
nothing. ``get_volume`` (its condition), ``list_volumes``, ``get_capacity``
(``vgs`` or the thin budget) and the idempotency check of ``create_volume``
stay real reads.

Health. ``Volume.condition`` comes from ``lv_attr`` and ``lv_health_status``
(a missing PV makes the LV partial; suspended or table-less devices; a thin
pool out of data or metadata space), and for an active LV from its filesystem
(:func:`backends.health.device_conditions`: not grown to the LV's size, ext4
errors).

One instance owns the VG: :meth:`LvmBackend.lock_storage` locks the device
node of each of its PVs (``flock``; the host's ``/dev`` is what every instance
sees) before anything else.

Snapshots and clones (only with a thin pool: ``features.snapshots`` and
``features.clones`` follow ``--lvm-thinpool``). A snapshot is a thin snapshot of
a thin volume (``lvcreate -s`` without a size): it costs nothing until either
side is written, and carries LVM's activation-skip flag, so it is never
activated. An active origin is consistent in the snapshot without help: LVM
suspends it with ``lockfs``, which freezes a mounted filesystem exactly as
FIFREEZE does (dirty data written, writers held) for the instant of the
snapshot. The driver must not freeze it itself: the kernel then refuses the
suspend (EBUSY, seen on Debian's 6.1) and the snapshot fails. A
restored volume is a thin snapshot *of the snapshot*, a clone a thin snapshot of
the source volume, both made without the skip flag: an independent thin LV (any
of the three can be deleted first), grown with ``lvextend`` when a larger size is
asked for. Snapshots count their full virtual size against the thin budget, like
any thin LV. Thick volumes cannot be snapshotted or cloned (INVALID_ARGUMENT,
naming the reason): a consistent copy would cost the full size and a block copy
of the whole volume; and a restored volume is always thin (asking for
``type=thick`` with a content source is INVALID_ARGUMENT).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
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
    is_snapshot_id,
    is_volume_id,
    published,
    snapshot_id_for,
)
from backends.lvm.options import LvmOptions
from backends.lvm.tags import (
    TAG_CREATED,
    TAG_FORMAT,
    TAG_NAME,
    TAG_OWNER,
    TAG_PUBLISHED,
    TAG_READONLY,
    TAG_SNAPSHOT_NAME,
    TAG_SOURCE_VOLUME,
    condition_of,
    content_source_of,
    decode_tags,
    encode_tag,
    owned,
    owned_snapshot,
    source_tag,
    to_snapshot,
    to_volume,
)
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
from backends.system import storagelock
from backends.system.errors import CommandError
from backends.system.lvm import LogicalVolume, LogicalVolumeNotFound, Lvm, VolumeGroup, VolumeGroupNotFound
from backends.system.runner import Runner
from backends.system.stats import block_device_size

PARAM_TYPE = "lvm.localcsi.dev/type"
PARAMETERS = {PARAM_TYPE: ("thick", "thin")}


def parse_type(parameters: Mapping[str, str], has_pool: bool) -> bool:
    """Whether the parameters ask for a thin volume (the default when there is a thin pool); unknown keys are
    an error."""
    chosen = parse_parameters(parameters, "lvm", PARAMETERS).get(PARAM_TYPE)
    thin = has_pool if chosen is None else chosen == "thin"
    if thin and not has_pool:
        raise errors.UnsupportedParameter(f"{PARAM_TYPE}=thin needs a thin pool (--lvm-thinpool)")
    return thin


class LvmBackend:
    """Volumes as logical volumes of one volume group (thick, or thin in one pool)."""

    name: ClassVar[str] = "lvm"

    def __init__(self, node_id: str, options: LvmOptions, runner: Runner) -> None:
        options.validate()
        if not options.vg:
            raise errors.InvalidArgument("the lvm backend needs a volume group (--lvm-vg)")
        self.node_id = node_id
        self._vg = options.vg
        self._pool = options.thinpool or None
        self._ratio = options.thin_overprovision
        self._lvm = Lvm(runner)
        self._runner = runner
        self._extent = 4 * MIB
        self._index: dict[str, LogicalVolume] = {}
        self._snapshots: dict[str, LogicalVolume] = {}
        self._pool_lock = anyio.Lock()
        self._storage_lock: storagelock.StorageLock | None = None
        self.features = options.features()

    @property
    def volume_group(self) -> str:
        return self._vg

    @property
    def thinpool(self) -> str | None:
        return self._pool

    # lifecycle ------------------------------------------------------------
    async def lock_storage(self) -> None:
        """Lock the device node of every present PV of the VG (one ``pvs``)."""
        if self._storage_lock is not None:
            return
        await self._checked_vg()
        pvs = await self._lvm.physical_volumes(self._vg)
        if not pvs:
            raise errors.Unavailable(f"no PV of volume group {self._vg!r} is present to lock")
        self._storage_lock = await anyio.to_thread.run_sync(
            storagelock.lock_devices, pvs, f"volume group {self._vg} ({', '.join(pvs)})")

    async def start(self) -> None:
        try:
            version = await self._lvm.version()
        except CommandError as exc:
            raise errors.Unavailable(f"the LVM tools do not run here: {exc}") from exc
        vg = await self._checked_vg()
        self._extent = vg.extent_size_bytes
        await self._checked_pool()
        lvs = await self._lvm.logical_volumes(self._vg)
        self._index = {lv.name: lv for lv in lvs if owned(lv)}
        self._snapshots = {lv.name: lv for lv in lvs if owned_snapshot(lv)}
        logger.info(
            "lvm backend on VG {vg} (pool {pool}, {lvm}): {n} volumes, {s} snapshots",
            vg=self._vg,
            pool=self._pool,
            lvm=version,
            n=len(self._index),
            s=len(self._snapshots),
        )

    async def _checked_vg(self) -> VolumeGroup:
        try:
            vg = await self._lvm.volume_group(self._vg)
        except VolumeGroupNotFound as exc:
            raise errors.Unavailable(f"volume group {self._vg!r} does not exist on this node") from exc
        if vg.partial:
            logger.warning("volume group {vg} is missing {n} PV(s)", vg=self._vg, n=vg.missing_pv_count)
        return vg

    async def _checked_pool(self) -> LogicalVolume | None:
        if self._pool is None:
            return None
        pool = await self._lvm.logical_volume(self._vg, self._pool)
        if pool is None or not pool.thin_pool:
            raise errors.Unavailable(f"{self._vg}/{self._pool} is not a thin pool")
        return pool

    async def close(self) -> None:
        lock, self._storage_lock = self._storage_lock, None
        if lock is not None:
            lock.release()

    async def check_health(self) -> None:
        await self._checked_vg()
        pool = await self._checked_pool()
        if pool is not None and pool.problem():
            raise errors.Unavailable(f"thin pool {self._vg}/{self._pool}: {pool.problem()}")

    # lookups ----------------------------------------------------------------
    async def _lookup(self, volume_id: str) -> LogicalVolume | None:
        """Our LV for ``volume_id`` as LVM has it now (and the index updated)."""
        if not is_volume_id(volume_id):
            return None
        lv = await self._lvm.logical_volume(self._vg, volume_id)
        if lv is None or not owned(lv):
            self._index.pop(volume_id, None)
            return None
        self._index[volume_id] = lv
        return lv

    async def _require(self, volume_id: str) -> LogicalVolume:
        lv = await self._lookup(volume_id)
        if lv is None:
            raise errors.VolumeNotFound(volume_id)
        return lv

    async def _known(self, volume_id: str) -> LogicalVolume | None:
        """Our LV for ``volume_id`` from the index; on a miss, from LVM (someone else may have made it).

        The index holds what ``start``, ``list_volumes`` and our own changes last
        saw. A hit is trusted for what only we change (name, tags, type); what can
        change behind our back (activation, health) is never read from it.
        """
        if not is_volume_id(volume_id):
            return None
        lv = self._index.get(volume_id)
        return lv if lv is not None else await self._lookup(volume_id)

    async def _change_tags(self, lv: LogicalVolume, add: list[str], delete: list[str]) -> None:
        """Change our tags on ``lv`` and keep the index in step without asking LVM again."""
        try:
            await self._lvm.change_tags(self._vg, lv.name, add=add, delete=delete)
        except LogicalVolumeNotFound as exc:
            self._index.pop(lv.name, None)
            raise errors.VolumeNotFound(lv.name) from exc
        kept = tuple(tag for tag in lv.tags if tag not in delete)
        self._index[lv.name] = dataclasses.replace(lv, tags=kept + tuple(t for t in add if t not in kept))

    # controller -----------------------------------------------------------
    async def create_volume(self, spec: VolumeSpec) -> Volume:
        """Make the LV, or answer with the one an earlier call made for the same name.

        Only a retry finds the volume in the index; it asks LVM, which has the last word (the LV may have
        been removed behind our back). A new name goes straight to ``lvcreate``: LVM's own "already exists"
        is the check for an LV the index does not know (one made by another instance, or not ours at all).
        """
        thin = parse_type(spec.parameters, self._pool is not None)
        volume_id = spec.volume_id
        existing = await self._lookup(volume_id) if volume_id in self._index else None
        if existing is not None:
            return self._check_compatible(existing, spec, thin)
        try:
            return await self._create_new(spec, thin)
        except errors.AlreadyExists:
            existing = await self._lvm.logical_volume(self._vg, volume_id)  # ours or not: the check says
            if existing is None:
                raise
            return self._check_compatible(existing, spec, thin)

    async def _create_new(self, spec: VolumeSpec, thin: bool) -> Volume:
        volume_id = spec.volume_id
        tags = [TAG_OWNER, TAG_FORMAT, encode_tag(TAG_NAME, spec.name)]
        if spec.source is not None:
            return await self._create_from_source(spec, spec.source, thin, tags)
        size = volume_size(spec, self._extent)
        if thin:
            assert self._pool is not None
            async with self._pool_lock:
                await self._reserve_thin(size)
                await self._lvm.create_thin(self._vg, self._pool, volume_id, size, tags)
        else:
            await self._lvm.create_linear(self._vg, volume_id, size, tags)
        with anyio.CancelScope(shield=True):
            if not thin:
                # Active exactly while staged: undo the activation lvcreate needs to zero a linear LV
                # (thin LVs are created inactive, so a crash here can leave none active).
                await self._lvm.deactivate(self._vg, volume_id)
            lv = await self._require(volume_id)
        logger.info(
            "created {kind} LV {vg}/{id} of {size} bytes for {name!r}",
            kind="thin" if thin else "thick",
            vg=self._vg,
            id=volume_id,
            size=lv.size_bytes,
            name=spec.name,
        )
        return to_volume(lv)

    def _check_compatible(self, lv: LogicalVolume, spec: VolumeSpec, thin: bool) -> Volume:
        if not owned(lv):
            raise errors.VolumeConflict(f"an LV {self._vg}/{lv.name} not created by localcsi is in the way")
        if spec.name not in decode_tags(lv.tags, TAG_NAME):
            raise errors.VolumeConflict(f"volume id {lv.name} belongs to another name")
        kind = {"provisioning": "thin" if lv.thin else "thick"}
        check_repeat(Existing(lv.name, "", lv.size_bytes, content_source_of(lv), kind), spec,
                     {"provisioning": "thin" if thin else "thick"})
        self._index[lv.name] = lv
        return to_volume(lv)

    async def _create_from_source(self, spec: VolumeSpec, source: ContentSource, thin: bool,
                                  tags: list[str]) -> Volume:
        """A restore (thin snapshot of the snapshot) or a clone (thin snapshot of the volume)."""
        if self._pool is None:
            raise errors.InvalidArgument("restoring and cloning need a thin pool (--lvm-thinpool)")
        if not thin:
            raise errors.InvalidArgument(
                f"a volume restored or cloned by the lvm backend is a thin LV; {PARAM_TYPE}=thick cannot be honoured"
            )
        origin = await self._origin(source)
        size = copy_size(spec, origin.size_bytes, self._extent)
        volume_id = spec.volume_id
        async with self._pool_lock:
            await self._reserve_thin(size)
            await self._lvm.create_thin_snapshot(
                self._vg, origin.name, volume_id, [*tags, source_tag(source)], activation_skip=False
            )
            with anyio.CancelScope(shield=True):
                try:
                    if size > origin.size_bytes:
                        await self._lvm.extend(self._vg, volume_id, size)
                except BaseException:
                    await self._lvm.remove(self._vg, volume_id)
                    raise
                lv = await self._require(volume_id)
        logger.info(
            "created thin LV {vg}/{id} of {size} bytes for {name!r} from {kind} {source}",
            vg=self._vg,
            id=volume_id,
            size=lv.size_bytes,
            name=spec.name,
            kind=source.kind.value,
            source=source.source_id,
        )
        return to_volume(lv)

    async def _origin(self, source: ContentSource) -> LogicalVolume:
        if source.kind is SourceKind.SNAPSHOT:
            return await self._require_snapshot(source.source_id)
        origin = await self._lookup(source.source_id)
        if origin is None:
            raise errors.VolumeNotFound(source.source_id)
        if not origin.thin:
            raise errors.InvalidArgument(
                f"volume {origin.name} is a thick LV: only thin volumes can be cloned (a thick clone would be "
                "a full block copy)"
            )
        return origin

    async def _thin_available(self) -> tuple[int, LogicalVolume]:
        """Bytes of virtual size the pool may still hand out, and the pool."""
        lvs = await self._lvm.logical_volumes(self._vg)
        pool = next((lv for lv in lvs if lv.name == self._pool and lv.thin_pool), None)
        if pool is None:
            raise errors.Unavailable(f"thin pool {self._vg}/{self._pool} is gone")
        committed = sum(lv.size_bytes for lv in lvs if lv.thin and lv.pool_lv == self._pool)
        return max(0, int(pool.size_bytes * self._ratio) - committed), pool

    async def _reserve_thin(self, size: int) -> None:
        available, pool = await self._thin_available()
        if pool.problem():
            raise errors.CapacityExhausted(f"thin pool {self._vg}/{self._pool}: {pool.problem()}")
        if size > available:
            raise errors.CapacityExhausted(
                f"thin pool {self._vg}/{self._pool} can take {available} more bytes at overprovisioning ratio "
                f"{self._ratio:g}, not {size}"
            )

    async def delete_volume(self, volume_id: str) -> None:
        lv = await self._known(volume_id)
        if lv is None:
            return
        with contextlib.suppress(LogicalVolumeNotFound):
            await self._lvm.remove(self._vg, volume_id)
        self._index.pop(volume_id, None)
        logger.info("deleted LV {vg}/{id}", vg=self._vg, id=volume_id)

    async def get_volume(self, volume_id: str) -> Volume:
        lv = await self._require(volume_id)
        return to_volume(lv, await self._condition(lv))

    async def volume_health(self, volume_id: str) -> Condition:
        return await self._condition(await self._require(volume_id))

    async def _condition(self, lv: LogicalVolume) -> Condition:
        pool = await self._lvm.logical_volume(self._vg, lv.pool_lv) if lv.thin and lv.pool_lv else None
        return (await self._conditions([lv], {lv.pool_lv: pool} if pool else {}))[lv.name]

    async def _conditions(self, lvs: list[LogicalVolume],
                          pools: Mapping[str, LogicalVolume]) -> dict[str, Condition]:
        """Each LV's condition: LVM's (attributes, health, its pool's), then an active one's filesystem."""
        devices = {}
        for lv in lvs:
            device = await self._lvm.active_device(self._vg, lv.name) if lv.active else None
            if device is not None:
                devices[lv.name] = device
        attached = await health.device_conditions(devices)
        return {lv.name: health.combine(condition_of(lv, pools.get(lv.pool_lv)), attached.get(lv.name))
                for lv in lvs}

    async def require_volume(self, volume_id: str) -> None:
        if await self._known(volume_id) is None:
            raise errors.VolumeNotFound(volume_id)

    async def reads_as_zeros(self, volume_id: str) -> bool:
        return False  # telling would take an lvs (thin: nothing mapped); the probe is cheaper

    async def may_hold_data(self, volume_id: str) -> bool:
        """A restored or cloned LV holds its source's data (its content-source tag says so); of any other LV
        the tags keep no history of writes, so the probe decides (no LVM command: the index answers)."""
        lv = await self._known(volume_id)
        return lv is None or content_source_of(lv) is not None

    async def list_volumes(self) -> list[Volume]:
        """Every volume as LVM has it now, each with its condition (its thin pool's included).

        One ``lvs`` of the VG: the external health monitor polls ListVolumes, so a
        pool that ran out of space must show here, not only in ControllerGetVolume.
        """
        lvs = await self._lvm.logical_volumes(self._vg)
        pools = {lv.name: lv for lv in lvs if lv.thin_pool}
        self._index = {lv.name: lv for lv in lvs if owned(lv)}
        ordered = sorted(self._index.values(), key=lambda lv: lv.name)
        conditions = await self._conditions(ordered, pools)
        return [to_volume(lv, conditions[lv.name]) for lv in ordered]

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        thin = parse_type(parameters, self._pool is not None)
        if thin:
            available, _ = await self._thin_available()
        else:
            vg = await self._lvm.volume_group(self._vg)
            available = vg.free_count * vg.extent_size_bytes
        available -= available % self._extent
        return Capacity(available_bytes=available, maximum_volume_bytes=available, minimum_volume_bytes=self._extent)

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        lv = await self._require(volume_id)
        new_size = round_up(required_bytes, self._extent)
        if limit_bytes and new_size > limit_bytes:
            raise errors.OutOfRange(f"{new_size} bytes (whole extents) exceeds the limit of {limit_bytes} bytes")
        if new_size <= lv.size_bytes:
            return lv.size_bytes
        if lv.thin:
            async with self._pool_lock:
                await self._reserve_thin(new_size - lv.size_bytes)
                await self._lvm.extend(self._vg, volume_id, new_size)
        else:
            await self._lvm.extend(self._vg, volume_id, new_size)
        grown = await self._require(volume_id)
        logger.info(
            "grew LV {vg}/{id} from {old} to {new} bytes",
            vg=self._vg,
            id=volume_id,
            old=lv.size_bytes,
            new=grown.size_bytes,
        )
        return grown.size_bytes

    async def publish_volume(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        lv = await self._known(volume_id)
        if lv is None:
            raise errors.VolumeNotFound(volume_id)
        if node_id != self.node_id:
            raise errors.NotFound(f"node {node_id!r} is unknown here: volume {volume_id} lives on {self.node_id!r}")
        nodes = tuple(decode_tags(lv.tags, TAG_PUBLISHED))
        change = published(nodes, tuple(decode_tags(lv.tags, TAG_READONLY)), node_id, readonly)
        if change is not None:
            add = [encode_tag(TAG_PUBLISHED, node_id)]
            if readonly:
                add.append(encode_tag(TAG_READONLY, node_id))
            await self._change_tags(lv, add=add, delete=[])
        return {}

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None:
        lv = await self._known(volume_id)
        if lv is None:
            return
        keys = (f"{TAG_PUBLISHED}=", f"{TAG_PUBLISHED}.hex=", f"{TAG_READONLY}=", f"{TAG_READONLY}.hex=")
        stale = [
            tag for tag in lv.tags
            if tag.startswith(keys)
            and (not node_id or node_id in decode_tags([tag], TAG_PUBLISHED) + decode_tags([tag], TAG_READONLY))
        ]  # fmt: skip
        if stale:
            with contextlib.suppress(errors.VolumeNotFound):
                await self._change_tags(lv, add=[], delete=stale)

    # node -------------------------------------------------------------------
    # No LVM command unless LVM must change: the index names our volumes, and
    # whether an LV is active is read from its device-mapper device (sysfs).
    async def attach(self, volume_id: str, readonly: bool) -> str:
        lv = await self._known(volume_id)
        if lv is None:
            raise errors.VolumeNotFound(volume_id)
        device = await self._lvm.active_device(self._vg, volume_id)
        if device is not None:
            return device
        try:
            await self._lvm.activate(self._vg, volume_id)
        except LogicalVolumeNotFound as exc:
            self._index.pop(volume_id, None)
            raise errors.VolumeNotFound(volume_id) from exc
        logger.info("activated LV {vg}/{id}", vg=self._vg, id=volume_id)
        device = await self._lvm.active_device(self._vg, volume_id)
        return device if device is not None else await self._unusual_device(volume_id)

    async def _unusual_device(self, volume_id: str) -> str:
        """Activation left no device we recognise: ask LVM (a skip flag, or missing /dev nodes)."""
        lv = await self._require(volume_id)
        if not lv.active and lv.activation_skip:
            await self._lvm.activate_skipped(self._vg, volume_id)
            lv = await self._require(volume_id)
        return await self._lvm.device_node(lv)

    async def device_path(self, volume_id: str) -> str | None:
        if await self._known(volume_id) is None:
            return None
        return await self._lvm.active_device(self._vg, volume_id)

    async def detach(self, volume_id: str) -> None:
        lv = await self._known(volume_id)
        if lv is None:
            return
        device = await self._lvm.active_device(self._vg, volume_id)
        if device is None:
            # Usually a retry; rarely an active LV whose /dev nodes are gone: only LVM can tell.
            lv = await self._lookup(volume_id)
            if lv is None or not lv.active:
                return
        for path in dict.fromkeys(p for p in (device, lv.path, lv.dm_path) if p):
            users = await paths.device_in_use(path)
            if users:
                raise errors.VolumeInUse(f"{path} of volume {volume_id} is still mounted at {', '.join(users)}")
        try:
            await self._lvm.deactivate(self._vg, volume_id)
        except LogicalVolumeNotFound:
            self._index.pop(volume_id, None)
            return
        logger.info("deactivated LV {vg}/{id}", vg=self._vg, id=volume_id)

    async def refresh_device_size(self, volume_id: str) -> int:
        device = await self.device_path(volume_id)
        if device is None:
            raise errors.PreconditionFailed(f"volume {volume_id} is not attached on this node")
        # lvextend reloads the table of an active LV: the device already has its new size.
        return await block_device_size(device)

    async def attached_devices(self) -> list[str]:
        """Our LVs that are active now (device-mapper devices, read from sysfs: no LVM command)."""
        found = [await self._lvm.active_device(self._vg, name) for name in list(self._index)]
        return sorted(d for d in found if d is not None)

    # snapshots ------------------------------------------------------------------
    async def _lookup_snapshot(self, snapshot_id: str) -> LogicalVolume | None:
        if not is_snapshot_id(snapshot_id):
            return None
        lv = await self._lvm.logical_volume(self._vg, snapshot_id)
        if lv is None or not owned_snapshot(lv):
            self._snapshots.pop(snapshot_id, None)
            return None
        self._snapshots[snapshot_id] = lv
        return lv

    async def _require_snapshot(self, snapshot_id: str) -> LogicalVolume:
        lv = await self._lookup_snapshot(snapshot_id)
        if lv is None:
            raise errors.SnapshotNotFound(snapshot_id)
        return lv

    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot:
        check_snapshot_parameters(parameters, "lvm")
        snapshot_id = snapshot_id_for(name)
        existing = await self._lvm.logical_volume(self._vg, snapshot_id)
        if existing is not None:
            if not owned_snapshot(existing):
                raise errors.SnapshotConflict(f"an LV {self._vg}/{snapshot_id} not created by localcsi is in the way")
            if name not in decode_tags(existing.tags, TAG_SNAPSHOT_NAME) or source_volume_id not in decode_tags(
                existing.tags, TAG_SOURCE_VOLUME
            ):
                raise errors.SnapshotConflict(f"snapshot {name!r} exists with another source volume")
            self._snapshots[snapshot_id] = existing
            return to_snapshot(existing)
        source = await self._require(source_volume_id)
        if self._pool is None or not source.thin:
            raise errors.InvalidArgument(
                f"volume {source_volume_id} is a thick LV: the lvm backend snapshots thin volumes only "
                f"({PARAM_TYPE}=thin in a VG with --lvm-thinpool)"
            )
        tags = [
            TAG_OWNER,
            TAG_FORMAT,
            encode_tag(TAG_SNAPSHOT_NAME, name),
            encode_tag(TAG_SOURCE_VOLUME, source_volume_id),
            encode_tag(TAG_CREATED, datetime.now(UTC).isoformat()),
        ]
        async with self._pool_lock:
            await self._reserve_thin(source.size_bytes)
            await self._lvm.create_thin_snapshot(self._vg, source.name, snapshot_id, tags, activation_skip=True)
        lv = await self._require_snapshot(snapshot_id)
        logger.info(
            "created thin snapshot {vg}/{id} of volume {source} for {name!r}",
            vg=self._vg,
            id=snapshot_id,
            source=source_volume_id,
            name=name,
        )
        return to_snapshot(lv)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        lv = await self._lookup_snapshot(snapshot_id)
        if lv is None:
            return
        with contextlib.suppress(LogicalVolumeNotFound):
            await self._lvm.remove(self._vg, snapshot_id)
        self._snapshots.pop(snapshot_id, None)
        logger.info("deleted snapshot {vg}/{id}", vg=self._vg, id=snapshot_id)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return to_snapshot(await self._require_snapshot(snapshot_id))

    async def list_snapshots(self) -> list[Snapshot]:
        return [to_snapshot(self._snapshots[key]) for key in sorted(self._snapshots)]
