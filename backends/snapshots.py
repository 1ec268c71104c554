"""The snapshot record the file-keeping backends share (loopfile, rawdisk).

Each snapshot has a versioned JSON record next to its image (see
:mod:`backends.metadata` for how it is written). The fields every backend
keeps live here; a backend subclasses :class:`SnapshotRecord` for what only it
needs (loopfile: ``method``, ``block_size``; rawdisk: ``sector_bytes``,
``data_bytes``) and names those fields in :meth:`SnapshotRecord.extras_to_json`
and :meth:`SnapshotRecord.extras_from_json`. The JSON is one flat object, so a
record written before this module existed reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from backends.base import Snapshot

#: Schema number of a snapshot record.
SCHEMA = 1
CREATING, READY, DELETING = "creating", "ready", "deleting"


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot's record: what every backend keeps."""

    snapshot_id: str
    name: str
    source_volume_id: str
    #: The source volume's capacity: the smallest volume the snapshot restores into.
    size_bytes: int
    #: :data:`CREATING`, :data:`READY` or :data:`DELETING`; only ready snapshots are listed.
    state: str
    created_at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            snapshot_id=str(data["snapshot_id"]),
            name=str(data["name"]),
            source_volume_id=str(data["source_volume_id"]),
            size_bytes=int(data["size_bytes"]),
            state=str(data["state"]),
            created_at=str(data["created_at"]),
            **cls.extras_from_json(data),
        )

    @classmethod
    def extras_from_json(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """A subclass's own fields, read from the record (with their defaults where older records lack them)."""
        return {}

    def extras_to_json(self) -> dict[str, Any]:
        """A subclass's own fields, as stored."""
        return {}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "snapshot_id": self.snapshot_id,
            "name": self.name,
            "source_volume_id": self.source_volume_id,
            "size_bytes": self.size_bytes,
            "state": self.state,
            "created_at": self.created_at,
            **self.extras_to_json(),
        }

    def to_snapshot(self) -> Snapshot:
        return Snapshot(
            snapshot_id=self.snapshot_id,
            name=self.name,
            source_volume_id=self.source_volume_id,
            size_bytes=self.size_bytes,
            creation_time=datetime.fromisoformat(self.created_at),
            ready_to_use=self.state == READY,
        )
