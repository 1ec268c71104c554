"""Pure request checks: names, ids, paths, capacity ranges, capabilities, topology.

Everything here is a function of the request (and the backend's declared
features) alone; failures raise :mod:`backends.errors` exceptions, which the
one error table turns into gRPC codes. No I/O except :func:`safe_path`'s
symlink check, which only reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import betterproto2

from backends import errors, paths
from backends.base import TOPOLOGY_KEY, AccessType, ContentSource, Features, SourceKind
from backends.ids import is_driver_snapshot_id, is_driver_volume_id
from csi.gen.csi import v1 as csi

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


def volume_id(value: str, what: str = "volume_id") -> str:
    """A volume id from a request: empty is INVALID_ARGUMENT; not one of ours is NOT_FOUND."""
    required(value, what)
    if not is_driver_volume_id(value):
        raise errors.VolumeNotFound(value[:200])
    return value


def snapshot_id(value: str, what: str = "snapshot_id") -> str:
    required(value, what)
    if not is_driver_snapshot_id(value):
        raise errors.SnapshotNotFound(value[:200])
    return value


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


def safe_path(path: str, what: str, prefixes: Sequence[str] = ()) -> str:
    """An absolute, normalised path with no symlink in it, under one of ``prefixes`` if any are set.

    The kubelet hands us these paths; anything else (``..``, relative paths, NUL
    bytes, a symlink planted to redirect a mount onto the host) is refused.
    """
    required(path, what)
    if "\0" in path or len(path.encode()) > MAX_PATH_BYTES:
        raise errors.InvalidArgument(f"{what} is not a valid path")
    _printable(path, what)
    if not os.path.isabs(path):
        raise errors.InvalidArgument(f"{what} must be an absolute path")
    normal = os.path.normpath(path)
    if normal != path.rstrip("/") or "/../" in f"{path}/" or normal == "/":
        raise errors.InvalidArgument(f"{what} must be a normalised path without '..'")
    if prefixes and not any(normal == p or normal.startswith(p.rstrip("/") + "/") for p in prefixes):
        raise errors.InvalidArgument(f"{what} is outside the kubelet directory")
    _no_symlinks(normal, what)
    return normal


def _no_symlinks(path: str, what: str) -> None:
    """Refuse a path any existing component of which is a symlink (realpath would differ)."""
    probe = path
    while probe and not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if probe and os.path.realpath(probe) != probe:
        raise errors.InvalidArgument(f"{what} goes through a symbolic link")


@dataclass(frozen=True)
class RequestedAccess:
    """What a list of capabilities asks of a volume."""

    access_types: frozenset[AccessType]
    fs_type: str
    mount_flags: tuple[str, ...]
    read_only: bool
    #: SINGLE_NODE_SINGLE_WRITER: at most one publish target.
    single_writer: bool = False

    @property
    def access_type(self) -> AccessType:
        return AccessType.MOUNT if AccessType.MOUNT in self.access_types else AccessType.BLOCK


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
