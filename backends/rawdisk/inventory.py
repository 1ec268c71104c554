"""Which allow-listed disks exist, and for each: free, claimed by a volume, or excluded (and why).

:func:`classify` is the eligibility policy, a pure function of what sysfs,
mountinfo, ``/proc/swaps``, our own GPT reader and ``blkid`` said, so every
rule is unit-tested without a disk. :func:`scan` gathers those facts for
every device the allow-list matches. The rules, in the order they apply:

1. the path must exist and be a block device;
2. a whole disk: not a partition, not a device-mapper or md device, not a
   loop device stacked on another block device (our own partition views);
3. not empty (size 0, e.g. a loop device with nothing attached);
4. a disk carrying our claim is *claimed*, whatever else is true of it;
5. otherwise it must be writable, not swap, not mounted (nor any of its
   partitions), not held by a stacking driver (nor any of its partitions),
   large enough, and carry no signature at all: a filesystem, partition
   table, LVM or RAID member, or anything blkid recognises is someone's data.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import anyio
from loguru import logger

from backends.errors import SystemFailure
from backends.rawdisk import claim as rawdisk_claim
from backends.rawdisk.options import DEFAULT_MIN_BYTES
from backends.system import blkid, disks, gpt
from backends.system.runner import Runner


class State(enum.Enum):
    FREE = "free"
    CLAIMED = "claimed"
    EXCLUDED = "excluded"


@dataclass(frozen=True)
class Disk:
    """One allow-listed device and what we may do with it."""

    path: str
    real_path: str
    pattern: str
    state: State
    reason: str
    size_bytes: int = 0
    #: What a volume on this disk gets: the partition size (0 when excluded before sizing).
    capacity_bytes: int = 0
    sector_bytes: int = 512
    discard: bool = False
    claim: rawdisk_claim.Claim | None = None

    @property
    def name(self) -> str:
        return self.real_path.rsplit("/", 1)[-1]

    @property
    def volume_id(self) -> str:
        return self.claim.volume_id if self.claim else ""

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "device": self.real_path,
            "size_bytes": self.size_bytes,
            "capacity_bytes": self.capacity_bytes,
            "state": self.state.value,
            "volume_id": self.volume_id,
            "volume_name": self.claim.record.name if self.claim else "",
            "reason": self.reason,
        }


def _structural_reason(facts: disks.DiskFacts) -> str:
    """Rules 1-3: reasons that do not depend on the disk's contents."""
    if not facts.exists:
        return "does not exist"
    if not facts.is_block:
        return "is not a block device"
    if facts.is_partition:
        return "is a partition, not a whole disk"
    if facts.stacked:
        kind = {"dm": "a device-mapper", "md": "an md RAID"}[facts.stacked]
        return f"is {kind} device, not a whole disk"
    if facts.loop_backing.startswith("/dev/"):
        return f"is a loop device over {facts.loop_backing} (a partition view), not a disk"
    if facts.size_bytes == 0:
        return "has no media (size 0)"
    return ""


def _usage_reason(facts: disks.DiskFacts, capacity_bytes: int, min_bytes: int) -> str:
    """Rule 5 except the signature probe."""
    if facts.readonly:
        return "is read-only"
    if facts.swap:
        return "is in use as swap"
    if facts.mount_points:
        return f"is mounted at {', '.join(facts.mount_points)}"
    if facts.holders:
        return f"is held by {', '.join(facts.holders)} (device-mapper, md or another stacking driver)"
    if facts.partition_holders:
        return f"has partitions held by {', '.join(facts.partition_holders)}"
    if capacity_bytes < min_bytes:
        return f"is too small: a volume would get {capacity_bytes} bytes, at least {min_bytes} are needed"
    return ""


def classify(
    match: disks.Match,
    facts: disks.DiskFacts,
    reading: rawdisk_claim.Reading | None,
    probe: blkid.Probe | None,
    *,
    min_bytes: int = DEFAULT_MIN_BYTES,
) -> Disk:
    """The policy. ``reading`` is None when the disk could not be read; ``probe`` when not probed."""
    base = Disk(match.path, match.real_path, match.pattern, State.EXCLUDED, "", facts.size_bytes,
                sector_bytes=facts.sector_bytes, discard=facts.discard)
    structural = _structural_reason(facts)
    if structural:
        return _with(base, State.EXCLUDED, structural)
    layout = gpt.Layout(facts.size_bytes, facts.sector_bytes)
    capacity = layout.partition_bytes
    if reading is not None and reading.claim is not None:
        reason = f"holds volume {reading.claim.volume_id}"
        if not reading.claim.record.ready:
            reason += " (still being copied: a clone or restore in progress, or interrupted)"
        return _with(base, State.CLAIMED, reason, capacity=reading.claim.partition_bytes, claim=reading.claim)
    usage = _usage_reason(facts, capacity, min_bytes)
    if usage:
        return _with(base, State.EXCLUDED, usage, capacity=capacity)
    if reading is None:
        return _with(base, State.EXCLUDED, "could not be read", capacity=capacity)
    if reading.foreign:
        return _with(base, State.EXCLUDED, f"carries {reading.foreign}: someone's data, never touched",
                     capacity=capacity)
    if probe is None:
        return _with(base, State.EXCLUDED, "could not be probed for signatures", capacity=capacity)
    if not probe.blank:
        return _with(base, State.EXCLUDED, f"carries {probe.description}: someone's data, never touched",
                     capacity=capacity)
    return _with(base, State.FREE, "blank and eligible", capacity=capacity)


def _with(disk: Disk, state: State, reason: str, *, capacity: int = 0,
          claim: rawdisk_claim.Claim | None = None) -> Disk:
    return Disk(disk.path, disk.real_path, disk.pattern, state, reason, disk.size_bytes, capacity,
                disk.sector_bytes, disk.discard, claim)


async def _read_claim(facts: disks.DiskFacts) -> rawdisk_claim.Reading | None:
    try:
        return await anyio.to_thread.run_sync(rawdisk_claim.read, facts.path, facts.sector_bytes, facts.size_bytes)
    except SystemFailure as exc:
        logger.warning("cannot read {}: {}", facts.path, exc)
        return None


async def _probe(runner: Runner, path: str) -> blkid.Probe | None:
    try:
        return await blkid.probe(runner, path)
    except SystemFailure as exc:
        logger.warning("cannot probe {}: {}", path, exc)
        return None


async def inspect_one(runner: Runner, match: disks.Match, facts: disks.DiskFacts, *,
                      min_bytes: int = DEFAULT_MIN_BYTES) -> Disk:
    """Read and probe only as far as the rules need (blkid only for an otherwise eligible disk)."""
    if _structural_reason(facts):
        return classify(match, facts, None, None, min_bytes=min_bytes)
    reading = await _read_claim(facts)
    probe = None
    if reading is not None and reading.claim is None and not reading.foreign:
        capacity = gpt.Layout(facts.size_bytes, facts.sector_bytes).partition_bytes
        if not _usage_reason(facts, capacity, min_bytes):
            probe = await _probe(runner, facts.path)
    return classify(match, facts, reading, probe, min_bytes=min_bytes)


async def scan(runner: Runner, patterns: Sequence[str], *, min_bytes: int = DEFAULT_MIN_BYTES,
               only: Collection[str] | None = None) -> list[Disk]:
    """Every device the allow-list matches, classified, in allow-list order.

    ``only`` (real device paths): read just those of them the allow-list matches, and leave duplicate claims
    to the caller, who holds the other disks (:func:`exclude_duplicate_claims`).
    """
    matches = await anyio.to_thread.run_sync(disks.expand, patterns)
    if only is not None:
        matches = [m for m in matches if m.real_path in only]
    facts = await anyio.to_thread.run_sync(disks.inspect_all, [m.real_path for m in matches])
    found = [await inspect_one(runner, m, facts[m.real_path], min_bytes=min_bytes) for m in matches]
    return found if only is not None else exclude_duplicate_claims(found)


def exclude_duplicate_claims(found: list[Disk]) -> list[Disk]:
    """A second disk claiming a volume already held (a cloned disk) is never used."""
    holders: dict[str, str] = {}
    out = []
    for disk in found:
        kept = disk
        if disk.claim is not None:
            first = holders.setdefault(disk.claim.volume_id, disk.real_path)
            if first != disk.real_path:
                kept = _with(disk, State.EXCLUDED,
                             f"also claims volume {disk.claim.volume_id}, which {first} holds (a cloned disk?)",
                             capacity=disk.capacity_bytes)
        out.append(kept)
    return out
