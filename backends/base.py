"""The seam between the CSI services and the storage backends.

``csi/`` talks to storage only through :class:`Backend`. A backend owns its
volumes' data *and* metadata (image + JSON file, LV tags, on-disk marks) and
re-derives all state from them at :meth:`Backend.start`; it keeps an in-memory
index so that no call scans every volume. Every method is idempotent: it first
reads the current state, succeeds when that is already the desired one, and
raises a :mod:`backends.errors` exception otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol

from backends.errors import InvalidArgument, SnapshotNotFound, VolumeConflict
from backends.ids import is_snapshot_id, is_volume_id, snapshot_id_for, volume_id_for

__all__ = ["TOPOLOGY_KEY", "is_snapshot_id", "is_volume_id", "snapshot_id_for", "volume_id_for"]

#: Topology key every volume carries: ``topology.localcsi.dev/node=<node id>``.
TOPOLOGY_KEY = "topology.localcsi.dev/node"


def published(
    node_ids: tuple[str, ...], readonly_ids: tuple[str, ...], node_id: str, readonly: bool
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The publication lists after publishing to ``node_id``; None when nothing changes.

    Publishing again with the other read-only flag is a conflict (ALREADY_EXISTS), as the spec asks.
    """
    if node_id in node_ids:
        if (node_id in readonly_ids) != readonly:
            raise VolumeConflict(f"the volume is already published to {node_id!r} "
                                 f"{'read-only' if node_id in readonly_ids else 'read-write'}")
        return None
    return (*node_ids, node_id), ((*readonly_ids, node_id) if readonly else readonly_ids)


class AccessType(enum.Enum):
    MOUNT = "mount"
    BLOCK = "block"


class SourceKind(enum.Enum):
    SNAPSHOT = "snapshot"
    VOLUME = "volume"


@dataclass(frozen=True)
class RequestedAccess:
    """What a request's capabilities ask of a volume (parsed and checked by ``csi/validation.py``)."""

    access_types: frozenset[AccessType]
    fs_type: str
    mount_flags: tuple[str, ...]
    read_only: bool
    #: SINGLE_NODE_SINGLE_WRITER: at most one publish target.
    single_writer: bool = False

    @property
    def access_type(self) -> AccessType:
        return AccessType.MOUNT if AccessType.MOUNT in self.access_types else AccessType.BLOCK

    @property
    def block(self) -> bool:
        return self.access_type is AccessType.BLOCK


@dataclass(frozen=True)
class Features:
    """What a backend can do; advertised capabilities derive from this only."""

    block: bool = True
    filesystem: bool = True
    #: ControllerExpandVolume grows the backing storage; NodeExpandVolume the filesystem.
    expansion: bool = False
    snapshots: bool = False
    clones: bool = False
    fs_types: tuple[str, ...] = ("ext4", "xfs")


@dataclass(frozen=True)
class ContentSource:
    kind: SourceKind
    source_id: str


@dataclass(frozen=True)
class VolumeSpec:
    """A validated CreateVolume request, in backend terms."""

    name: str
    #: 0 means the caller did not ask for a minimum.
    required_bytes: int
    #: 0 means no upper limit.
    limit_bytes: int
    parameters: Mapping[str, str]
    access_type: AccessType = AccessType.MOUNT
    fs_type: str = ""
    source: ContentSource | None = None

    @property
    def volume_id(self) -> str:
        return volume_id_for(self.name)


@dataclass(frozen=True)
class Condition:
    abnormal: bool = False
    message: str = "volume is healthy"


@dataclass(frozen=True)
class Volume:
    volume_id: str
    name: str
    capacity_bytes: int
    #: Returned to the CO as volume_context and passed back on node calls.
    context: Mapping[str, str] = field(default_factory=dict)
    source: ContentSource | None = None
    published_node_ids: tuple[str, ...] = ()
    condition: Condition = Condition()


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    name: str
    source_volume_id: str
    size_bytes: int
    creation_time: datetime
    ready_to_use: bool = True


@dataclass(frozen=True)
class Capacity:
    #: What new volumes could still take, in total, on this node.
    available_bytes: int
    #: The largest single volume that could be created now.
    maximum_volume_bytes: int
    #: The smallest volume this backend creates (0: no minimum).
    minimum_volume_bytes: int = 0


class Backend(Protocol):
    """What every storage backend implements. All methods are idempotent."""

    name: ClassVar[str]

    @property
    def features(self) -> Features: ...

    @property
    def node_id(self) -> str: ...

    # lifecycle ----------------------------------------------------------
    async def lock_storage(self) -> None:
        """Take this instance's exclusive lock on its storage (:mod:`backends.system.storagelock`), before
        :meth:`start` reads or repairs anything there. Another instance holding it: ``StorageInUse``, naming
        it, with nothing touched. The driver calls it once; :meth:`close` (or the process's end) releases it.
        A backend made for a test may skip it."""

    async def start(self) -> None:
        """Check tools and storage, rebuild the index from the backend's own state.

        Raises ``Unavailable`` with a clear message when the backend cannot run.
        """

    async def close(self) -> None: ...

    async def check_health(self) -> None:
        """Raise ``Unavailable`` when the backend cannot serve requests now."""

    # controller side -----------------------------------------------------
    async def create_volume(self, spec: VolumeSpec) -> Volume:
        """Create (or find the identical earlier) volume for ``spec.name``.

        Same name with an incompatible size/source: ``VolumeConflict``.
        No room: ``CapacityExhausted``. Unknown source: ``NotFound``.
        """

    async def delete_volume(self, volume_id: str) -> None:
        """Remove a volume and everything it owns; absent is success."""

    async def get_volume(self, volume_id: str) -> Volume:
        """Raise ``VolumeNotFound`` when absent. The condition is read fresh (it may cost I/O or a command)."""

    async def require_volume(self, volume_id: str) -> None:
        """Raise ``VolumeNotFound`` when absent; nothing else. The node calls' existence check, answered from
        the backend's index without I/O whenever the volume is known (a miss may ask the storage)."""

    async def reads_as_zeros(self, volume_id: str) -> bool:
        """True only when every byte of the volume provably reads as zero now, so formatting it loses nothing
        (NodeStage then skips the content probe). False whenever unsure: the probe decides."""

    async def may_hold_data(self, volume_id: str) -> bool:
        """True when the volume may hold data written through it: data was seen in it when it was attached
        or detached, or it was made as a copy. Such a volume is formatted only when it provably reads as zeros
        (:meth:`reads_as_zeros`); a blank probe of it means data without a signature (a raw block volume
        staged as a filesystem), which must be refused. False for a volume never used since its creation (an
        interrupted first format is then formatted again). Answered from the backend's own records."""

    async def volume_health(self, volume_id: str) -> Condition:
        """The volume's condition now, from its storage (missing or short data, backing space, a device or
        filesystem that does not match the volume): the one health function behind ListVolumes,
        ControllerGetVolume, NodeGetVolumeStats and the metrics. Raise ``VolumeNotFound`` when absent."""

    async def list_volumes(self) -> list[Volume]:
        """Every volume, sorted by id, each with its condition as :meth:`volume_health` finds it."""

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity: ...

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        """Grow the backing storage to at least ``required_bytes``; return the new size."""

    async def publish_volume(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        """Record that ``node_id`` may use the volume; return the publish context."""

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None: ...

    # node side -----------------------------------------------------------
    async def attach(self, volume_id: str, readonly: bool) -> str:
        """Make the volume's block device present on this node; return its path."""

    async def detach(self, volume_id: str) -> None:
        """Undo :meth:`attach`; nothing attached is success."""

    async def device_path(self, volume_id: str) -> str | None:
        """The attached device, or ``None`` when the volume is not attached."""

    async def refresh_device_size(self, volume_id: str) -> int:
        """After expansion, make the attached device show the new size; return it."""

    async def attached_devices(self) -> list[str]:
        """The block devices this backend attached on this node and that are attached now (its loop devices,
        its active LVs), sorted; never another user's. From the backend's index (sysfs at most)."""

    # snapshots (only when ``features.snapshots``) ------------------------
    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot: ...

    async def delete_snapshot(self, snapshot_id: str) -> None: ...

    async def get_snapshot(self, snapshot_id: str) -> Snapshot: ...

    async def list_snapshots(self) -> list[Snapshot]: ...


class WithoutSnapshots:
    """Mixin for backends that cannot hold snapshots (``features.snapshots`` is False).

    The capability is then not advertised, so the sidecars never call these; a
    direct call still gets a clear INVALID_ARGUMENT, and lookups find nothing.
    """

    name: ClassVar[str]

    async def create_snapshot(self, source_volume_id: str, name: str, parameters: Mapping[str, str]) -> Snapshot:
        raise InvalidArgument(f"the {self.name} backend does not support snapshots")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise InvalidArgument(f"the {self.name} backend does not support snapshots")

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        raise SnapshotNotFound(snapshot_id)

    async def list_snapshots(self) -> list[Snapshot]:
        return []
