"""Storage pools: many named backend instances in one driver, routed by the pool an id names.

A pool is one backend instance with its own settings (``fast`` = lvm on VG ``nvme``, ``bulk`` = loopfile in
``/mnt/hdd/localcsi``, ``disks`` = rawdisk over some disks). :class:`Pools` is itself a
:class:`~backends.base.Backend`: the CSI services talk to it exactly as to one backend, and it hands each call
to the pool it concerns.

Routing. CreateVolume chooses the pool from the StorageClass parameter :data:`POOL_PARAMETER` (absent: the
default pool) and removes that key before the pool's backend sees the parameters. Every id a driver with a
pools file hands out for a pool other than the default carries its pool (``lcv-…@fast``,
:func:`backends.ids.qualify`), so every later call finds its pool from the id alone; an id without a pool
belongs to the default pool. The default pool's own ids carry no pool: the ids of volumes made before pools
existed, or by a driver configured with flags, stay exactly what the CO holds (ListVolumes, its published
nodes) when their storage becomes the default pool of a pools file, and moving back to flags keeps them too.
So the default pool, once it holds volumes, stays the default (docs/pools.md); a qualified id naming it is
accepted as well.

Failure isolation. A pool whose storage cannot be opened at start-up (VG missing, directory unmounted, disks
gone) does not stop the others: it is kept *unavailable*, its calls answer UNAVAILABLE naming the pool and the
cause, it reports no capacity, and it is retried in the background until it starts. A pool that breaks later
answers for itself: a failure that its health check explains becomes UNAVAILABLE naming the pool. The driver is
ready while any pool works; start-up fails only when none can start.

One instance per storage. :meth:`Pools.lock_storage` locks every pool's storage before any pool starts: a pool
whose storage another instance holds ends start-up (StorageInUse: a second driver on the same node must not run
beside the first, whatever else it could serve); a pool whose storage cannot be looked at yet is locked, then
started, when its retry succeeds.

Copies stay within a pool: a snapshot lives in its source's pool and a clone or restore from another pool's
source is refused (INVALID_ARGUMENT, naming both pools).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import anyio
from anyio.abc import TaskGroup
from loguru import logger

from backends import errors
from backends.base import Backend, Capacity, Condition, ContentSource, Features, Snapshot, Volume, VolumeSpec
from backends.ids import POOL_NAME, qualify, split_snapshot_id, split_volume_id
from backends.options import Options
from backends.system.runner import Runner

#: The StorageClass parameter that chooses a pool.
POOL_PARAMETER = "localcsi.dev/pool"
#: The pool a driver configured by flags serves.
DEFAULT_POOL = "default"
#: How often an unavailable pool is tried again.
RETRY_SECONDS = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class PoolSpec:
    """One pool as configured: its name, its backend's settings, whether it is the default."""

    name: str
    options: Options
    default: bool = False

    def __post_init__(self) -> None:
        if not POOL_NAME.match(self.name):
            raise ValueError(f"pool name {self.name!r} must be a DNS label of at most 32 characters "
                             "(lower-case letters, digits and '-')")


def default_pool(specs: Sequence[PoolSpec]) -> PoolSpec:
    """The pool marked default, or the only pool; anything else is a configuration error (ValueError)."""
    if not specs:
        raise ValueError("no pool is configured")
    marked = [s for s in specs if s.default]
    if len(marked) > 1:
        raise ValueError(f"more than one default pool: {', '.join(s.name for s in marked)}")
    if marked:
        return marked[0]
    if len(specs) == 1:
        return specs[0]
    raise ValueError(f"{len(specs)} pools and none is the default: mark one with default")


def merged_features(specs: Sequence[PoolSpec]) -> Features:
    """What a driver serving ``specs`` can do: each capability that any pool has (a call a pool cannot serve
    is refused by that pool), filesystems in the order the pools name them."""
    each = [s.options.features() for s in specs]
    fs_types = tuple(dict.fromkeys(fs for f in each for fs in f.fs_types))
    return Features(
        block=any(f.block for f in each),
        filesystem=any(f.filesystem for f in each),
        expansion=any(f.expansion for f in each),
        snapshots=any(f.snapshots for f in each),
        clones=any(f.clones for f in each),
        fs_types=fs_types,
    )


class Pool:
    """One configured pool and, once it has started, its backend."""

    def __init__(self, spec: PoolSpec, backend: Backend) -> None:
        self.spec = spec
        self.name = spec.name
        self.backend = backend
        self.started = False
        #: Why the pool is unavailable ("" while it serves).
        self.problem = "not started"

    @property
    def available(self) -> bool:
        return self.started and not self.problem

    def unavailable(self) -> errors.Unavailable:
        return errors.Unavailable(f"pool {self.name} is unavailable: {self.problem}")


class Pools:
    """Every pool of this driver behind the one Backend interface the services use."""

    name: ClassVar[str] = "pools"

    def __init__(self, node_id: str, specs: Sequence[PoolSpec], runner: Runner, *, qualify_ids: bool = True,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool {duplicates[0]!r} is configured twice")
        self._default = default_pool(specs).name
        if not qualify_ids and len(specs) != 1:
            raise ValueError("ids without pools need exactly one pool")
        self.node_id = node_id
        self._qualify = qualify_ids
        self._retry_seconds = retry_seconds
        self.features = merged_features(specs)
        # Opening a backend checks its settings only (e.g. a VG is named); its storage is looked at in start().
        self._pools = {s.name: Pool(s, s.options.open(node_id, runner)) for s in specs}
        self._tg: TaskGroup | None = None

    # -- what the driver is -------------------------------------------------------
    @property
    def default(self) -> str:
        return self._default

    def pools(self) -> list[Pool]:
        return list(self._pools.values())

    # -- lifecycle ----------------------------------------------------------------
    async def lock_storage(self) -> None:
        """Lock every pool's storage; another instance holding any of it ends start-up (StorageInUse). A pool
        whose storage cannot be looked at now is locked again by its start (retried)."""
        for pool in self._pools.values():
            try:
                await pool.backend.lock_storage()
            except errors.StorageInUse:
                await self.close()
                raise
            except errors.BackendError as exc:
                logger.debug("pool {}: cannot lock its storage yet: {}", pool.name, exc.message)

    async def _start_pool(self, pool: Pool) -> None:
        """Lock (again: idempotent) and start one pool's backend."""
        await pool.backend.lock_storage()
        await pool.backend.start()

    async def start(self) -> None:
        """Start every pool; those whose storage fails stay unavailable (retried), unless all fail."""
        failures: list[BaseException] = []
        for pool in self._pools.values():
            try:
                await self._start_pool(pool)
            except errors.BackendError as exc:
                pool.problem = exc.message
                failures.append(exc)
                logger.error("pool {} ({}) is unavailable: {}", pool.name, pool.spec.options.describe(), exc.message)
                continue
            pool.started, pool.problem = True, ""
        if len(failures) == len(self._pools):
            if len(self._pools) == 1:
                raise failures[0]
            raise errors.Unavailable("no pool could start: " + "; ".join(
                f"{p.name}: {p.problem}" for p in self._pools.values()))
        if failures:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg.start_soon(self._retry_unavailable)

    async def _retry_unavailable(self) -> None:
        while any(not p.started for p in self._pools.values()):
            await anyio.sleep(self._retry_seconds)
            for pool in self._pools.values():
                if pool.started:
                    continue
                try:
                    await self._start_pool(pool)
                except errors.BackendError as exc:
                    pool.problem = exc.message
                    logger.debug("pool {} still unavailable: {}", pool.name, exc.message)
                    continue
                pool.started, pool.problem = True, ""
                logger.info("pool {} is available again", pool.name)

    async def close(self) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        for pool in self._pools.values():
            await pool.backend.close()  # started or not: it may hold its storage's lock

    async def check_health(self) -> None:
        """Ready while any pool serves; each pool's health is refreshed (see :meth:`pools`)."""
        for pool in self._pools.values():
            if not pool.started:
                continue
            try:
                await pool.backend.check_health()
            except errors.Unavailable as exc:
                if not pool.problem:
                    logger.warning("pool {} is unavailable: {}", pool.name, exc.message)
                pool.problem = exc.message
            else:
                if pool.problem:
                    logger.info("pool {} is available again", pool.name)
                pool.problem = ""
        if not any(p.available for p in self._pools.values()):
            raise errors.Unavailable("no pool is available: " + "; ".join(
                f"{p.name}: {p.problem}" for p in self._pools.values()))

    # -- routing --------------------------------------------------------------------
    def _named(self, name: str) -> Pool:
        pool = self._pools.get(name or self._default)
        if pool is None:
            raise errors.InvalidArgument(f"unknown pool {name!r}; this node has {', '.join(sorted(self._pools))}")
        return pool

    def _serving(self, pool: Pool) -> Pool:
        if not pool.started:
            raise pool.unavailable()
        return pool

    def _volume(self, volume_id: str) -> tuple[Pool, str]:
        """The pool and local id of a volume id; an id of no configured pool is VolumeNotFound."""
        parts = split_volume_id(volume_id)
        if parts is None or (parts[1] and not self._qualify) or (parts[1] or self._default) not in self._pools:
            raise errors.VolumeNotFound(volume_id)
        return self._serving(self._pools[parts[1] or self._default]), parts[0]

    def _snapshot(self, snapshot_id: str) -> tuple[Pool, str]:
        parts = split_snapshot_id(snapshot_id)
        if parts is None or (parts[1] and not self._qualify) or (parts[1] or self._default) not in self._pools:
            raise errors.SnapshotNotFound(snapshot_id)
        return self._serving(self._pools[parts[1] or self._default]), parts[0]

    def _out(self, local_id: str, pool: Pool) -> str:
        """The id the CO is given: the default pool's plain (as every id was before pools, so the ids the CO
        already holds are the ones ListVolumes answers), another pool's carrying its pool."""
        return qualify(local_id, pool.name) if self._qualify and pool.name != self._default else local_id

    def _volume_out(self, volume: Volume, pool: Pool) -> Volume:
        source = volume.source
        if source is not None:
            source = replace(source, source_id=self._out(source.source_id, pool))
        return replace(volume, volume_id=self._out(volume.volume_id, pool), source=source)

    def _snapshot_out(self, snapshot: Snapshot, pool: Pool) -> Snapshot:
        return replace(snapshot, snapshot_id=self._out(snapshot.snapshot_id, pool),
                       source_volume_id=self._out(snapshot.source_volume_id, pool))

    async def _call(self, pool: Pool, call: Callable[[], Awaitable[T]]) -> T:
        """Run one call of ``pool``'s backend; its errors name the pool when there are several, and a failure its
        health check explains is UNAVAILABLE with that cause."""
        try:
            return await call()
        except errors.BackendError as exc:
            if isinstance(exc, errors.SystemFailure):
                await self._explain(pool, exc)
            self._name_pool(pool, exc)
            raise
        except OSError as exc:
            failure = errors.SystemFailure(f"{exc.strerror or exc}")
            await self._explain(pool, failure)
            self._name_pool(pool, failure)
            raise failure from exc

    async def _explain(self, pool: Pool, exc: errors.BackendError) -> None:
        """Raise UNAVAILABLE naming the pool when its health check explains ``exc``; return otherwise."""
        try:
            await pool.backend.check_health()
        except errors.Unavailable as health:
            pool.problem = health.message
            raise errors.Unavailable(f"pool {pool.name} is unavailable: {health.message}") from exc
        except (errors.BackendError, OSError):
            return

    def _name_pool(self, pool: Pool, exc: errors.BackendError) -> None:
        if len(self._pools) > 1 and not exc.message.startswith(f"pool {pool.name}"):
            exc.message = f"pool {pool.name}: {exc.message}"
            exc.args = (exc.message,)

    # -- controller ------------------------------------------------------------------
    def pool_for(self, parameters: Mapping[str, str]) -> tuple[Pool, dict[str, str]]:
        """The pool a StorageClass's parameters choose, and the parameters meant for its backend."""
        rest = dict(parameters)
        return self._named(rest.pop(POOL_PARAMETER, "")), rest

    async def create_volume(self, spec: VolumeSpec) -> Volume:
        pool, parameters = self.pool_for(spec.parameters)
        self._serving(pool)
        source = spec.source
        if source is not None:
            source = self._local_source(source, pool)
        local = replace(spec, parameters=parameters, source=source)
        return self._volume_out(await self._call(pool, lambda: pool.backend.create_volume(local)), pool)

    def _local_source(self, source: ContentSource, pool: Pool) -> ContentSource:
        split = split_snapshot_id if source.kind.value == "snapshot" else split_volume_id
        parts = split(source.source_id)
        if parts is None:
            raise (errors.SnapshotNotFound(source.source_id) if source.kind.value == "snapshot"
                   else errors.VolumeNotFound(source.source_id))
        home = parts[1] or self._default
        if home != pool.name:
            raise errors.InvalidArgument(
                f"the {source.kind.value} {source.source_id} lives in pool {home}; a volume of pool {pool.name} "
                "cannot be restored or cloned from another pool")
        return replace(source, source_id=parts[0])

    async def delete_volume(self, volume_id: str) -> None:
        parts = split_volume_id(volume_id)
        if parts is None or (parts[1] and parts[1] not in self._pools):
            # Not ours, or of a pool this node does not have: refuse rather than forget it silently.
            if parts is not None:
                raise errors.Unavailable(f"volume {volume_id} belongs to pool {parts[1]}, which this node does "
                                         f"not have ({', '.join(sorted(self._pools))})")
            return
        pool, local = self._volume(volume_id)
        await self._call(pool, lambda: pool.backend.delete_volume(local))

    async def get_volume(self, volume_id: str) -> Volume:
        pool, local = self._volume(volume_id)
        return self._volume_out(await self._call(pool, lambda: pool.backend.get_volume(local)), pool)

    async def require_volume(self, volume_id: str) -> None:
        pool, local = self._volume(volume_id)
        await self._call(pool, lambda: pool.backend.require_volume(local))

    async def reads_as_zeros(self, volume_id: str) -> bool:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.reads_as_zeros(local))

    async def may_hold_data(self, volume_id: str) -> bool:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.may_hold_data(local))

    async def volume_health(self, volume_id: str) -> Condition:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.volume_health(local))

    async def list_volumes(self) -> list[Volume]:
        """Every volume of every serving pool, sorted by id; a pool that cannot list is left out (logged)."""
        found: list[Volume] = []
        for pool in self._serving_pools():
            try:
                found += [self._volume_out(v, pool) for v in await pool.backend.list_volumes()]
            except errors.BackendError as exc:
                logger.warning("pool {}: cannot list volumes: {}", pool.name, exc.message)
        return sorted(found, key=lambda v: v.volume_id)

    def _serving_pools(self) -> Iterator[Pool]:
        return (p for p in self._pools.values() if p.started)

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        """The capacity of the pool the parameters choose; an unavailable pool has none."""
        pool, rest = self.pool_for(parameters)
        if not pool.available:
            return Capacity(available_bytes=0, maximum_volume_bytes=0)
        try:
            return await self._call(pool, lambda: pool.backend.get_capacity(rest))
        except errors.Unavailable as exc:  # its storage went away under the running driver: no room there now
            logger.warning("pool {}: no capacity while it is unavailable: {}", pool.name, exc.message)
            return Capacity(available_bytes=0, maximum_volume_bytes=0)

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.expand_volume(local, required_bytes, limit_bytes))

    async def publish_volume(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.publish_volume(local, node_id, readonly))

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None:
        try:
            pool, local = self._volume(volume_id)
        except errors.VolumeNotFound:
            return
        await self._call(pool, lambda: pool.backend.unpublish_volume(local, node_id))

    # -- node ------------------------------------------------------------------------
    async def attach(self, volume_id: str, readonly: bool) -> str:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.attach(local, readonly))

    async def detach(self, volume_id: str) -> None:
        pool, local = self._volume(volume_id)
        await self._call(pool, lambda: pool.backend.detach(local))

    async def device_path(self, volume_id: str) -> str | None:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.device_path(local))

    async def refresh_device_size(self, volume_id: str) -> int:
        pool, local = self._volume(volume_id)
        return await self._call(pool, lambda: pool.backend.refresh_device_size(local))

    async def attached_devices(self) -> list[str]:
        found: list[str] = []
        for pool in self._serving_pools():
            found += await pool.backend.attached_devices()
        return sorted(found)

    # -- snapshots -------------------------------------------------------------------
    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot:
        pool, local = self._volume(source_volume_id)
        rest = dict(parameters)
        named = rest.pop(POOL_PARAMETER, pool.name)  # a VolumeSnapshotClass may name the pool: it must be the source's
        if named != pool.name:
            raise errors.InvalidArgument(f"a snapshot lives in its source volume's pool {pool.name!r}, "
                                         f"not in {named!r} ({POOL_PARAMETER})")
        made = await self._call(pool, lambda: pool.backend.create_snapshot(local, name, rest))
        return self._snapshot_out(made, pool)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        parts = split_snapshot_id(snapshot_id)
        if parts is None:
            return
        if parts[1] and parts[1] not in self._pools:
            raise errors.Unavailable(f"snapshot {snapshot_id} belongs to pool {parts[1]}, which this node does "
                                     f"not have ({', '.join(sorted(self._pools))})")
        pool, local = self._snapshot(snapshot_id)
        await self._call(pool, lambda: pool.backend.delete_snapshot(local))

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        pool, local = self._snapshot(snapshot_id)
        return self._snapshot_out(await self._call(pool, lambda: pool.backend.get_snapshot(local)), pool)

    async def list_snapshots(self) -> list[Snapshot]:
        found: list[Snapshot] = []
        for pool in self._serving_pools():
            try:
                found += [self._snapshot_out(s, pool) for s in await pool.backend.list_snapshots()]
            except errors.BackendError as exc:
                logger.warning("pool {}: cannot list snapshots: {}", pool.name, exc.message)
        return sorted(found, key=lambda s: s.snapshot_id)
