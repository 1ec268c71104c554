"""Pure request checks: names, ids, paths, capacity ranges, capabilities, topology.

Everything here is a function of the request (and the backend's declared
features, the node's path policy) alone, with no I/O; failures raise
:mod:`backends.errors` exceptions, which the one error table turns into gRPC
codes. Every handler runs all of its checks before its first lookup, so a
malformed request is INVALID_ARGUMENT whatever it names. Whether an id is one
this driver could have issued is such a lookup (:func:`known_volume`,
:func:`known_snapshot`, :func:`known_source`): NOT_FOUND, after the checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

import betterproto2

from backends import errors, paths
from backends.base import (
    TOPOLOGY_KEY,
    AccessType,
    ContentSource,
    Features,
    RequestedAccess,
    SourceKind,
)
from backends.ids import is_driver_snapshot_id, is_driver_volume_id
from backends.nodeops import PathPolicy
from csi.gen.csi import v1 as csi

T = TypeVar("T")

#: The CSI spec's limit for strings a CO sends; longer names are refused, not truncated.
MAX_NAME_BYTES = 128
MAX_PATH_BYTES = 4096
MAX_MAP_BYTES = 4096

Mode = csi.VolumeCapabilityAccessModeMode
SINGLE_NODE_MODES = frozenset(
    {Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY, Mode.SINGLE_NODE_SINGLE_WRITER,
     Mode.SINGLE_NODE_MULTI_WRITER}
)
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})


def _printable(value: str, what: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise errors.InvalidArgument(f"{what} contains control characters")


def required(value: str, what: str) -> str:
    if not value:
        raise errors.InvalidArgument(f"{what} is required")
    return value


def volume_name(name: str) -> str:
    required(name, "name")
    _printable(name, "name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise errors.InvalidArgument(f"name is longer than {MAX_NAME_BYTES} bytes")
    return name


def present(value: T | None, what: str) -> T:
    """A required message field (absent is INVALID_ARGUMENT)."""
    if value is None:
        raise errors.InvalidArgument(f"{what} is required")
    return value


def volume_id(value: str, what: str = "volume_id") -> str:
    """A required id; whether it names a volume is a lookup (:func:`known_volume`), made after every check."""
    required(value, what)
    _printable(value, what)
    return value


def snapshot_id(value: str, what: str = "snapshot_id") -> str:
    required(value, what)
    _printable(value, what)
    return value


def known_volume(value: str) -> str:
    """The first lookup of a handler: an id this driver could not have issued is NOT_FOUND."""
    if not is_driver_volume_id(value):
        raise errors.VolumeNotFound(value[:200])
    return value


def known_snapshot(value: str) -> str:
    if not is_driver_snapshot_id(value):
        raise errors.SnapshotNotFound(value[:200])
    return value


def known_source(source: ContentSource | None) -> None:
    if source is not None:
        (known_snapshot if source.kind is SourceKind.SNAPSHOT else known_volume)(source.source_id)


def string_map(values: Mapping[str, str], what: str) -> Mapping[str, str]:
    size = 0
    for key, value in values.items():
        _printable(key, f"{what} key")
        if "\0" in value:
            raise errors.InvalidArgument(f"{what}[{key!r}] contains a NUL byte")
        size += len(key.encode()) + len(value.encode())
    if size > MAX_MAP_BYTES * 4:
        raise errors.InvalidArgument(f"{what} is larger than {MAX_MAP_BYTES * 4} bytes")
    return values


def _path_string(value: str, what: str) -> str:
    required(value, what)
    if "\0" in value or len(value.encode()) > MAX_PATH_BYTES:
        raise errors.InvalidArgument(f"{what} is not a valid path")
    _printable(value, what)
    return value


def path(value: str, what: str, policy: PathPolicy | None = None) -> str:
    """An absolute, normalised path (a trailing slash dropped) that ``policy`` admits: strictly below the
    kubelet directory, clear of the driver's own. Whether it goes through a symbolic link is the node's to see.

    The kubelet hands us these paths; anything else (``..``, relative paths, NUL bytes, the kubelet
    directory itself) is refused.
    """
    _path_string(value, what)
    if not os.path.isabs(value):
        raise errors.InvalidArgument(f"{what} must be an absolute path")
    normal = os.path.normpath(value)
    if normal != value.rstrip("/") or "/../" in f"{value}/" or normal == "/" or normal.startswith("//"):
        raise errors.InvalidArgument(f"{what} must be a normalised path without '..'")
    return policy.require(normal, what) if policy is not None else normal


def volume_path(value: str, what: str = "volume_path") -> str:
    """Where a volume is said to be published (stats, expansion). Required and a valid string; a path where no
    volume can be published (relative, outside the kubelet directory) is not malformed but NOT_FOUND, which the
    node answers after its lookup."""
    return _path_string(value, what)


class UnsupportedCapability(errors.InvalidArgument):
    """A well-formed capability this driver cannot serve."""


def _access_mode(cap: csi.VolumeCapability) -> Mode:
    if cap.access_mode is None:
        raise errors.InvalidArgument("volume capability has no access_mode")
    try:
        mode = Mode(cap.access_mode.mode)
    except ValueError as exc:
        raise errors.InvalidArgument(f"unknown access mode {cap.access_mode.mode!r}") from exc
    if mode == Mode.UNKNOWN:
        raise errors.InvalidArgument("access mode is UNKNOWN")
    return mode


def _which(message: betterproto2.Message, group: str) -> tuple[str, object]:
    try:
        return betterproto2.which_one_of(message, group)
    except RuntimeError as exc:  # both members of a oneof arrived on the wire
        raise errors.InvalidArgument(f"more than one {group} is set") from exc


def capability(cap: csi.VolumeCapability, features: Features, *, any_mode: bool = False) -> RequestedAccess:
    """Parse one capability. ``any_mode``: the access mode may be absent or UNKNOWN (GetCapacity, where
    the external-provisioner sends the StorageClass's access type without a mode)."""
    kind, value = _which(cap, "access_type")
    if any_mode and (cap.access_mode is None or cap.access_mode.mode == Mode.UNKNOWN):
        mode = Mode.SINGLE_NODE_WRITER
    else:
        mode = _access_mode(cap)
    if not kind:
        raise errors.InvalidArgument("volume capability sets neither block nor mount")
    if mode not in SINGLE_NODE_MODES:
        raise UnsupportedCapability(f"access mode {mode.name} is not supported: volumes are local to one node")
    read_only = mode in READ_ONLY_MODES
    single = mode == Mode.SINGLE_NODE_SINGLE_WRITER
    if kind == "block":
        if not features.block:
            raise UnsupportedCapability("this backend does not provide raw block volumes")
        return RequestedAccess(frozenset({AccessType.BLOCK}), "", (), read_only, single)
    assert isinstance(value, csi.VolumeCapabilityMountVolume)
    if not features.filesystem:
        raise UnsupportedCapability("this backend does not provide filesystem volumes")
    fs_type = value.fs_type or features.fs_types[0]
    if fs_type not in features.fs_types:
        raise UnsupportedCapability(f"filesystem {fs_type!r} is not supported (choose one of {features.fs_types})")
    for flag in value.mount_flags:
        _printable(flag, "mount flag")
    paths.check_mount_options(list(value.mount_flags))
    return RequestedAccess(frozenset({AccessType.MOUNT}), fs_type, tuple(value.mount_flags), read_only, single)


def capabilities(
    caps: Sequence[csi.VolumeCapability], features: Features, *, any_mode: bool = False
) -> RequestedAccess:
    """Merge a non-empty list of capabilities; every one must be supported."""
    if not caps:
        raise errors.InvalidArgument("volume_capabilities is required")
    parsed = [capability(c, features, any_mode=any_mode) for c in caps]
    fs_types = {p.fs_type for p in parsed if p.fs_type}
    if len(fs_types) > 1:
        raise UnsupportedCapability(f"capabilities ask for more than one filesystem: {sorted(fs_types)}")
    flags = tuple(f for p in parsed for f in p.mount_flags)
    return RequestedAccess(
        frozenset(t for p in parsed for t in p.access_types),
        next(iter(fs_types), ""),
        flags,
        all(p.read_only for p in parsed),
        any(p.single_writer for p in parsed),
    )


def capabilities_problem(caps: Sequence[csi.VolumeCapability], features: Features) -> str:
    """ValidateVolumeCapabilities: "" when every capability is supported, else why not. A malformed list is
    INVALID_ARGUMENT (raised), an unsupported one only an answer."""
    try:
        capabilities(caps, features)
    except UnsupportedCapability as exc:
        return str(exc)
    return ""


def capacity_range(value: csi.CapacityRange | None) -> tuple[int, int]:
    if value is None:
        return 0, 0
    if value.required_bytes < 0 or value.limit_bytes < 0:
        raise errors.InvalidArgument("capacity_range values must not be negative")
    if value.limit_bytes and value.required_bytes > value.limit_bytes:
        raise errors.InvalidArgument("capacity_range.required_bytes exceeds limit_bytes")
    return value.required_bytes, value.limit_bytes


def topology_allows(requirement: csi.TopologyRequirement | None, node_id: str) -> bool:
    """True when this node may hold the volume: no requisite, or one requisite segment names it."""
    if requirement is None or not requirement.requisite:
        return True
    return any(t.segments.get(TOPOLOGY_KEY) == node_id for t in requirement.requisite)


def content_source(source: csi.VolumeContentSource | None) -> ContentSource | None:
    """The source named; whether it exists is a lookup (:func:`known_source` first)."""
    if source is None:
        return None
    kind, value = _which(source, "type")
    if kind == "snapshot":
        assert isinstance(value, csi.VolumeContentSourceSnapshotSource)
        return ContentSource(SourceKind.SNAPSHOT, snapshot_id(value.snapshot_id, "snapshot source id"))
    if kind == "volume":
        assert isinstance(value, csi.VolumeContentSourceVolumeSource)
        return ContentSource(SourceKind.VOLUME, volume_id(value.volume_id, "volume source id"))
    raise errors.InvalidArgument("volume_content_source names neither a snapshot nor a volume")


def max_entries(value: int) -> int:
    if value < 0:
        raise errors.InvalidArgument("max_entries must not be negative")
    return value
