"""The metadata records of the ``loopfile`` backend, kept next to the data they describe.

``<id>.json`` beside each image (:class:`ImageRecord`) and ``snapshots/<id>.json`` beside each snapshot image
(:class:`SnapshotRecord`), both written atomically (:mod:`backends.metadata`), both schema 1. A record's
``state`` is ``creating``, ``ready`` or ``deleting``: only ready ones are volumes or snapshots; start-up
finishes off the others (see :mod:`backends.loopfile.backend`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.base import Condition, ContentSource, SourceKind, Volume
from backends.provisioning import CONTEXT_BACKEND, CONTEXT_PROVISIONING
from backends.snapshots import CREATING, DELETING, READY
from backends.snapshots import SnapshotRecord as BaseSnapshotRecord

__all__ = ["CREATING", "DELETING", "READY", "SCHEMA", "ImageRecord", "SnapshotRecord"]

SCHEMA = 1


@dataclass(frozen=True)
class ImageRecord:
    """One volume's metadata record, as stored in ``<id>.json``."""

    volume_id: str
    name: str
    capacity_bytes: int
    thin: bool
    state: str
    created_at: str
    source: ContentSource | None = None
    published_node_ids: tuple[str, ...] = ()
    readonly_node_ids: tuple[str, ...] = ()
    #: Logical block size of its loop device (0: the kernel's choice, records from before it was kept).
    block_size: int = 0
    #: Data was seen in the image before an attach or after a detach, or it was made as a copy: a blank
    #: probe of it is data without a signature, never formatted (see ``Backend.may_hold_data``).
    held_data: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRecord:
        source = data.get("source")
        return cls(
            volume_id=str(data["volume_id"]),
            name=str(data["name"]),
            capacity_bytes=int(data["capacity_bytes"]),
            thin=bool(data["thin"]),
            state=str(data["state"]),
            created_at=str(data["created_at"]),
            source=ContentSource(SourceKind(source["kind"]), str(source["id"])) if source else None,
            published_node_ids=tuple(str(n) for n in data.get("published_node_ids", ())),
            readonly_node_ids=tuple(str(n) for n in data.get("readonly_node_ids", ())),
            block_size=int(data.get("block_size", 0)),
            held_data=bool(data.get("held_data", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "volume_id": self.volume_id,
            "name": self.name,
            "capacity_bytes": self.capacity_bytes,
            "thin": self.thin,
            "state": self.state,
            "created_at": self.created_at,
            "source": {"kind": self.source.kind.value, "id": self.source.source_id} if self.source else None,
            "published_node_ids": list(self.published_node_ids),
            "readonly_node_ids": list(self.readonly_node_ids),
            "block_size": self.block_size,
            "held_data": self.held_data,
        }

    def to_volume(self, condition: Condition | None = None) -> Volume:
        return Volume(
            volume_id=self.volume_id,
            name=self.name,
            capacity_bytes=self.capacity_bytes,
            context={CONTEXT_BACKEND: "loopfile", CONTEXT_PROVISIONING: "thin" if self.thin else "thick"},
            source=self.source,
            published_node_ids=self.published_node_ids,
            condition=condition or Condition(),
        )


@dataclass(frozen=True)
class SnapshotRecord(BaseSnapshotRecord):
    """One snapshot's metadata record, as stored in ``snapshots/<id>.json``."""

    #: How the image was made: "reflink" or "sparse" ("" while creating).
    method: str = ""
    #: The source volume's loop block size, inherited by volumes restored from the snapshot.
    block_size: int = 0

    @classmethod
    def extras_from_json(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"method": str(data.get("method", "")), "block_size": int(data.get("block_size", 0))}

    def extras_to_json(self) -> dict[str, Any]:
        return {"method": self.method, "block_size": self.block_size}
