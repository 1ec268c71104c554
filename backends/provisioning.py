"""Provisioning rules every backend shares: sizes, parameters, and what makes a repeated request compatible.

Each backend states only its own facts (its allocation unit, its parameter keys); the rules are written once:

* **Sizing.** A new blank volume gets ``required_bytes`` (1 GiB when the request names none, but never above
  ``limit_bytes``), at least :data:`MIN_FS_BYTES` of its filesystem, rounded up to the backend's unit; above
  ``limit_bytes`` after rounding is OUT_OF_RANGE. A restored or cloned volume holds at least its source's size:
  asking for less, or limiting it to less, is OUT_OF_RANGE.
* **Repeats.** CreateVolume for an existing name returns that volume only if it satisfies the new request
  (same name, size within the range, same content source, same backend-specific choices); otherwise
  ALREADY_EXISTS, naming the difference.
* **Parameters.** Unknown StorageClass (or VolumeSnapshotClass) keys are INVALID_ARGUMENT, never ignored,
  except the ``csi.storage.k8s.io/`` keys the sidecars add on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from backends import errors
from backends.base import ContentSource, VolumeSpec

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_SIZE_BYTES = 1 * GIB
#: The smallest volume made for each filesystem. xfs and btrfs: the smallest device their mkfs accepts with our
#: flags (xfsprogs 6.1, btrfs-progs 6.2); ext4 accepts 1 MiB but leaves out the journal below 2 MiB.
MIN_FS_BYTES: Mapping[str, int] = MappingProxyType({"ext4": 2 * MIB, "xfs": 300 * MIB, "btrfs": 109 * MIB})
#: Keys the sidecars add on their own (``--extra-create-metadata``): accepted and ignored.
IGNORED_PARAM_PREFIXES = ("csi.storage.k8s.io/",)
#: Volume-context keys every backend sets.
CONTEXT_BACKEND = "localcsi.dev/backend"
CONTEXT_PROVISIONING = "localcsi.dev/provisioning"


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def minimum_bytes(fs_type: str, unit: int) -> int:
    """The smallest volume of ``fs_type`` ("" for a raw block volume: one unit)."""
    return max(MIN_FS_BYTES.get(fs_type, unit) if fs_type else unit, unit)


def volume_size(spec: VolumeSpec, unit: int) -> int:
    """The size of a new blank volume for ``spec`` in whole ``unit``s."""
    wanted = spec.required_bytes or (min(DEFAULT_SIZE_BYTES, spec.limit_bytes) if spec.limit_bytes
                                     else DEFAULT_SIZE_BYTES)
    size = round_up(max(wanted, minimum_bytes(spec.fs_type, unit)), unit)
    if spec.limit_bytes and size > spec.limit_bytes:
        raise errors.OutOfRange(
            f"the smallest volume this backend can make for the request is {size} bytes (whole {unit}-byte units), "
            f"above the limit of {spec.limit_bytes} bytes"
        )
    return size


def check_copy_range(spec: VolumeSpec, source_bytes: int) -> None:
    """A restored or cloned volume must hold its source: a range below the source's size is OUT_OF_RANGE."""
    if spec.required_bytes and spec.required_bytes < source_bytes:
        raise errors.OutOfRange(
            f"the content source holds {source_bytes} bytes; a volume of {spec.required_bytes} bytes cannot hold it"
        )
    if spec.limit_bytes and spec.limit_bytes < source_bytes:
        raise errors.OutOfRange(
            f"the content source holds {source_bytes} bytes, more than the limit of {spec.limit_bytes} bytes"
        )


def copy_size(spec: VolumeSpec, source_bytes: int, unit: int) -> int:
    """The size of a restored or cloned volume: the source's, or ``required_bytes`` rounded up when larger."""
    check_copy_range(spec, source_bytes)
    size = round_up(spec.required_bytes, unit) if spec.required_bytes else source_bytes
    if spec.limit_bytes and size > spec.limit_bytes:
        raise errors.OutOfRange(
            f"{size} bytes (whole {unit}-byte units) for the copy exceeds the limit of {spec.limit_bytes} bytes")
    return size


@dataclass(frozen=True)
class Existing:
    """What a repeated CreateVolume is compared with: the volume already made under the request's id."""

    volume_id: str
    name: str
    capacity_bytes: int
    source: ContentSource | None
    #: Backend-specific choices (e.g. ``{"provisioning": "thin"}``), compared with the request's.
    choices: Mapping[str, str] = field(default_factory=dict)


def check_repeat(existing: Existing, spec: VolumeSpec, choices: Mapping[str, str] | None = None) -> None:
    """Raise VolumeConflict unless ``existing`` satisfies ``spec`` (a retry, or a compatible repeat)."""
    if existing.name and existing.name != spec.name:
        raise errors.VolumeConflict(f"volume id {existing.volume_id} belongs to another name")
    size = existing.capacity_bytes
    if spec.required_bytes and size < spec.required_bytes:
        raise errors.VolumeConflict(
            f"volume {spec.name!r} exists with {size} bytes, less than the {spec.required_bytes} bytes asked for")
    if spec.limit_bytes and size > spec.limit_bytes:
        raise errors.VolumeConflict(
            f"volume {spec.name!r} exists with {size} bytes, more than the limit of {spec.limit_bytes} bytes")
    for key, wanted in (choices or {}).items():
        have = existing.choices.get(key)
        if have is not None and have != wanted:
            raise errors.VolumeConflict(f"volume {spec.name!r} exists with {key} {have!r}, not {wanted!r}")
    if existing.source != spec.source:
        raise errors.VolumeConflict(f"volume {spec.name!r} exists with another content source")


def parse_parameters(parameters: Mapping[str, str], backend: str,
                     allowed: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The backend's own parameters from ``parameters``; ``allowed`` maps each known key to its valid values.

    Unknown keys and values outside the allowed ones are UnsupportedParameter (INVALID_ARGUMENT), naming them.
    """
    chosen: dict[str, str] = {}
    for key, value in parameters.items():
        if key.startswith(IGNORED_PARAM_PREFIXES):
            continue
        values = allowed.get(key)
        if values is None:
            raise errors.UnsupportedParameter(f"unknown parameter {key!r} for the {backend} backend")
        if value not in values:
            raise errors.UnsupportedParameter(f"{key} must be {' or '.join(repr(v) for v in values)}, not {value!r}")
        chosen[key] = value
    return chosen


def check_snapshot_parameters(parameters: Mapping[str, str], backend: str) -> None:
    """VolumeSnapshotClass parameters: no backend has any of its own; only the sidecars' keys are accepted."""
    for key in parameters:
        if not key.startswith(IGNORED_PARAM_PREFIXES):
            raise errors.UnsupportedParameter(f"unknown snapshot parameter {key!r} for the {backend} backend")
