"""Snapshots of rawdisk volumes: sparse image files in the ``--rawdisk-snapshot-dir`` directory.

A disk holds one volume and nothing else, so a snapshot cannot live beside
its volume as loopfile's do: it lives where the operator said there is room
for it, as an independent copy of the volume's partition::

    <dir>/<snapshot id>.img    the partition's bytes; runs of zeros are holes
    <dir>/<snapshot id>.json   its record (schema 1), written atomically

Creation writes the record ``creating``, copies, then writes it ``ready``;
deletion writes ``deleting``, removes the image, then the record. At start-up
a record left ``creating`` or ``deleting`` is finished off (its files are
removed: the CO was never told it succeeded), and an image without a record
is reported and left alone. Only ``ready`` snapshots are ever listed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from backends import errors, snapshots
from backends.base import is_snapshot_id
from backends.metadata import fsync_directory, load_record, write_record
from backends.snapshots import CREATING, DELETING, READY, SCHEMA

__all__ = ["CREATING", "DELETING", "READY", "SCHEMA", "SnapshotRecord", "SnapshotStore"]


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


class SnapshotStore:
    """The snapshot directory: its records in memory, its files on disk."""

    def __init__(self, directory: str) -> None:
        self._dir = os.path.abspath(directory)
        self._ready: dict[str, SnapshotRecord] = {}

    @property
    def directory(self) -> str:
        return self._dir

    def image(self, snapshot_id: str) -> str:
        return os.path.join(self._dir, snapshot_id + ".img")

    def _meta(self, snapshot_id: str) -> str:
        return os.path.join(self._dir, snapshot_id + ".json")

    async def start(self) -> list[SnapshotRecord]:
        """Load the ready snapshots; return the interrupted ones (their files are not removed yet)."""
        records = await anyio.to_thread.run_sync(self._prepare_and_scan)
        self._ready = {r.snapshot_id: r for r in records if r.state == READY}
        return [r for r in records if r.state != READY]

    def _prepare_and_scan(self) -> list[SnapshotRecord]:
        try:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            probe = os.path.join(self._dir, ".probe")
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise errors.Unavailable(f"the rawdisk snapshot directory {self._dir} is not usable: {exc.strerror}") \
                from exc
        for leftover in Path(self._dir).glob(".tmp-*.json"):
            leftover.unlink(missing_ok=True)
        with os.scandir(self._dir) as entries:
            names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        records = []
        for name in sorted(names):
            if name.endswith(".json") and is_snapshot_id(name[:-5]):
                records.append(SnapshotRecord.from_json(load_record(os.path.join(self._dir, name), SCHEMA)))
            elif name.endswith(".img") and name[:-4] + ".json" not in names:
                logger.warning("snapshot image {} in {} has no record; leaving it alone", name, self._dir)
        return records

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        return self._ready.get(snapshot_id)

    def records(self) -> list[SnapshotRecord]:
        return [self._ready[k] for k in sorted(self._ready)]

    async def begin(self, record: SnapshotRecord) -> None:
        """Write the ``creating`` record before any byte of the image."""
        await anyio.to_thread.run_sync(write_record, self._meta(record.snapshot_id), record.to_json())

    async def finish(self, record: SnapshotRecord) -> SnapshotRecord:
        """Write the ``ready`` record; from now on the snapshot exists."""
        await anyio.to_thread.run_sync(write_record, self._meta(record.snapshot_id), record.to_json())
        self._ready[record.snapshot_id] = record
        return record

    async def remove(self, snapshot_id: str) -> None:
        """Remove both files (image first); absent files are fine."""
        def remove() -> None:
            for path in (self.image(snapshot_id), self._meta(snapshot_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fsync_directory(self._dir)

        await anyio.to_thread.run_sync(remove)

    async def delete(self, snapshot_id: str) -> bool:
        """Delete a ready snapshot (mark, remove). False when there is none."""
        record = self._ready.pop(snapshot_id, None)
        if record is None:
            return False
        try:
            deleting = replace(record, state=DELETING)
            try:
                await anyio.to_thread.run_sync(write_record, self._meta(snapshot_id), deleting.to_json())
            except errors.CapacityExhausted:
                logger.warning("no room to mark snapshot {} deleting; removing it unmarked", snapshot_id)
            await self.remove(snapshot_id)
        except BaseException:
            self._ready[snapshot_id] = record
            raise
        return True
