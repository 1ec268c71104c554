"""The mark a claimed disk carries: our GPT, plus a small record in its alignment gap.

A disk belongs to volume ``lcv-…`` when, and only when, its *primary* GPT
(behind a protective MBR) holds exactly one partition of
:data:`PARTITION_TYPE` whose name is that volume id (36 characters, exactly
the GPT name field). That is all a restarted or reinstalled node needs to
know the disk is ours and which volume it holds.

What the GPT has no room for (the CSI name, creation time, the nodes the
volume is published to) lives in a versioned JSON record of one 4 KiB block
at :data:`RECORD_OFFSET`, inside the gap between the GPT entries and the
partition at 1 MiB that every partitioning tool leaves alone. The record is
a convenience: a missing or damaged one is reported and the claim stands
(name unknown, no publications), because the GPT alone decides ownership.
Records without ``state`` and ``source`` (older drivers) read as ready volumes
made from nothing.

A clone or restore claims its disk with a record in state ``copying``, copies
the data into the partition, and only then rewrites the record ``ready``: a
claim still ``copying`` after a crash is an unfinished creation, never a
volume, and the backend wipes it at start-up (the CO's retry starts over).

Write order makes a crash harmless:

* claim: record, then backup GPT at the end, then protective MBR + primary
  GPT last. Until that last write the disk has no protective MBR, so
  ``blkid`` still finds nothing and the disk is still free; a retry starts
  over.
* wipe: the volume's own signatures (first and last MiB of the partition,
  then BLKDISCARD of the rest where the device supports it), then the backup
  GPT, then the first MiB (MBR, primary GPT, record) last. Until that last
  write the disk is still claimed, so a retried delete finishes the job.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from loguru import logger

from backends.base import ContentSource, SourceKind, is_volume_id
from backends.system import gpt

#: Partition type GUID of a localcsi rawdisk volume (ours alone; no tool mounts it automatically).
PARTITION_TYPE = uuid.UUID("c3ba621b-6086-40bf-945a-c109bf7cf0c5")
RECORD_OFFSET = 512 * 1024
RECORD_BYTES = 4096
RECORD_MAGIC = b"localcsi-rawdisk"
RECORD_SCHEMA = 1
_RECORD_HEAD = struct.Struct("<16sIII")
MIB = 1 << 20
READY, COPYING = "ready", "copying"


@dataclass(frozen=True)
class Record:
    """The JSON record in the alignment gap."""

    volume_id: str
    name: str = ""
    created_at: str = ""
    published_node_ids: tuple[str, ...] = ()
    readonly_node_ids: tuple[str, ...] = ()
    #: :data:`READY`, or :data:`COPYING` while a clone or restore fills the disk (not a volume yet).
    state: str = "ready"
    #: What a cloned or restored volume was copied from.
    source: ContentSource | None = None

    @property
    def ready(self) -> bool:
        return self.state == READY

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        source = data.get("source")
        return cls(
            volume_id=str(data["volume_id"]),
            name=str(data.get("name", "")),
            created_at=str(data.get("created_at", "")),
            published_node_ids=tuple(str(n) for n in data.get("published_node_ids", ())),
            readonly_node_ids=tuple(str(n) for n in data.get("readonly_node_ids", ())),
            state=str(data.get("state", READY)),
            source=ContentSource(SourceKind(source["kind"]), str(source["id"])) if source else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "volume_id": self.volume_id,
            "name": self.name,
            "created_at": self.created_at,
            "published_node_ids": list(self.published_node_ids),
            "readonly_node_ids": list(self.readonly_node_ids),
            "state": self.state,
            "source": {"kind": self.source.kind.value, "id": self.source.source_id} if self.source else None,
        }


@dataclass(frozen=True)
class Claim:
    """A disk's claim as read back from the disk."""

    volume_id: str
    partition_offset: int
    partition_bytes: int
    partition_guid: uuid.UUID
    record: Record = field(default_factory=lambda: Record(""))

    def with_record(self, record: Record) -> Claim:
        return replace(self, record=record)


@dataclass(frozen=True)
class Reading:
    """What the start of a disk says about ownership."""

    claim: Claim | None = None
    #: Why a GPT that is there is not a claim we can use ("" when there is no GPT at all).
    foreign: str = ""


def encode_record(record: Record) -> bytes:
    payload = json.dumps({"schema": RECORD_SCHEMA, **record.to_json()}, sort_keys=True).encode()
    if _RECORD_HEAD.size + len(payload) > RECORD_BYTES:
        raise ValueError(f"rawdisk record of {len(payload)} bytes does not fit in {RECORD_BYTES} bytes")
    head = _RECORD_HEAD.pack(RECORD_MAGIC, RECORD_SCHEMA, len(payload), zlib.crc32(payload) & 0xFFFFFFFF)
    return (head + payload).ljust(RECORD_BYTES, b"\0")


def decode_record(raw: bytes) -> Record | None:
    """The record, or None when the block holds no intact record of a schema we know."""
    if len(raw) < _RECORD_HEAD.size:
        return None
    magic, schema, length, crc = _RECORD_HEAD.unpack(raw[: _RECORD_HEAD.size])
    if magic != RECORD_MAGIC or schema > RECORD_SCHEMA or length > RECORD_BYTES - _RECORD_HEAD.size:
        return None
    payload = raw[_RECORD_HEAD.size: _RECORD_HEAD.size + length]
    if zlib.crc32(payload) & 0xFFFFFFFF != crc:
        return None
    try:
        return Record.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError):
        return None


def interpret(head: gpt.Head, sector: int, disk_bytes: int) -> Reading:
    """Decide from the first MiB of a disk whether it is ours, someone else's GPT, or neither."""
    try:
        table = gpt.parse_primary(head, sector)
    except gpt.GptError:
        return Reading()
    ours = [p for p in table.partitions if p.type_guid == PARTITION_TYPE]
    if not ours:
        return Reading(foreign="a GPT partition table that localcsi did not write")
    if len(table.partitions) != 1:
        return Reading(foreign=f"a localcsi partition among {len(table.partitions)} partitions (not ours to touch)")
    partition = ours[0]
    if not is_volume_id(partition.name):
        return Reading(foreign=f"a localcsi partition with a malformed name {partition.name!r}")
    offset, size = table.byte_range(partition)
    if offset < MIB or offset + size > disk_bytes or size <= 0:
        return Reading(foreign="a localcsi partition outside the disk's bounds")
    record = decode_record(head[RECORD_OFFSET: RECORD_OFFSET + RECORD_BYTES])
    if record is None or record.volume_id != partition.name:
        logger.warning("disk claimed by {} has no intact record; name and publications are unknown", partition.name)
        record = Record(partition.name)
    return Reading(claim=Claim(partition.name, offset, size, partition.unique_guid, record))


# ------------------------------------------------------------ device I/O (blocking)


def read(path: str, sector: int, disk_bytes: int) -> Reading:
    with gpt.read_mapped(path, 0, min(MIB, disk_bytes - disk_bytes % sector)) as head:
        return interpret(head, sector, disk_bytes)


def write(path: str, layout: gpt.Layout, record: Record) -> None:
    """Claim a disk for ``record.volume_id`` (see the module docstring for the order)."""
    image = gpt.build(layout, type_guid=PARTITION_TYPE, name=record.volume_id)
    gpt.write_all(path, [
        gpt.Write(RECORD_OFFSET, encode_record(record)),
        gpt.Write(image.tail_offset, image.tail),
        gpt.Write(0, image.head),
    ])


def update_record(path: str, record: Record) -> None:
    """Rewrite only the record (the disk may be in use through its partition)."""
    gpt.write_all(path, [gpt.Write(RECORD_OFFSET, encode_record(record))], exclusive=False)


def wipe(path: str, claim: Claim, disk_bytes: int, *, discard: bool) -> None:
    """Remove everything we (and the volume's user) wrote, in the crash-safe order."""
    start, size = claim.partition_offset, claim.partition_bytes
    edge = min(MIB, size)
    writes = [gpt.Write(start, zero_bytes=edge)]
    if size > edge:
        writes.append(gpt.Write(start + size - edge, zero_bytes=edge))
    gpt.write_all(path, writes)
    if discard and size > 2 * edge:
        done = gpt.discard(path, start + edge, size - 2 * edge)
        logger.debug("discard of {} bytes on {}: {}", size - 2 * edge, path, "done" if done else "not supported")
    tail_start = start + size
    # write_all syncs after each write, so the backup GPT is gone before the first MiB is.
    gpt.write_all(path, [gpt.Write(tail_start, zero_bytes=disk_bytes - tail_start), gpt.Write(0, zero_bytes=start)])
