"""Snapshots of rawdisk volumes: sparse image files in the ``--rawdisk-snapshot-dir`` directory.

A disk holds one volume and nothing else, so a snapshot cannot live beside
its volume as loopfile's do: it lives where the operator said there is room
for it, as an independent copy of the volume's partition::

    <dir>/<snapshot id>.img    the partition's bytes; runs of zeros are holes
    <dir>/<snapshot id>.json   its record (schema 1), written atomically

The directory is a :class:`backends.snapshots.SnapshotStore` (creation,
crash-safe deletion, start-up), of records of the type below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends import snapshots
from backends.snapshots import CREATING, DELETING, READY, SCHEMA

__all__ = ["CREATING", "DELETING", "READY", "SCHEMA", "SnapshotRecord"]


@dataclass(frozen=True)
class SnapshotRecord(snapshots.SnapshotRecord):
    """A rawdisk snapshot's record (``size_bytes`` is also the image's length)."""

    #: Logical sector size of the source disk: a restore needs a disk with sectors no larger.
    sector_bytes: int = 512
    #: Bytes of the image that hold data (the rest are holes).
    data_bytes: int = 0

    @classmethod
    def extras_from_json(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"sector_bytes": int(data.get("sector_bytes", 512)), "data_bytes": int(data.get("data_bytes", 0))}

    def extras_to_json(self) -> dict[str, Any]:
        return {"sector_bytes": self.sector_bytes, "data_bytes": self.data_bytes}
