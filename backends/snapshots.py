"""The snapshots of the file-keeping backends (loopfile, rawdisk): image files with a record beside each.

A snapshot directory holds, for each snapshot::

    <snapshot id>.img         its data, an independent copy (sparse, or a reflink clone)
    <snapshot id>.json        its record (schema 1), written atomically (:mod:`backends.metadata`)
    .tmp-<snapshot id>.img    its data while it is being deleted (the deletion's mark)

Creation writes the record ``creating``, copies, then writes it ``ready``. Deletion renames the image to its
``.tmp-`` name, removes the record and the image and fsyncs the directory once: renames and unlinks need no
free space, so a snapshot can be deleted from a full filesystem, and a crash part-way leaves the mark, which
start-up finishes. At start-up a record left ``creating`` (or ``deleting``, by older drivers) is returned as
interrupted (the backend thaws what the copy may have frozen, then removes it), and an image without a
record is reported and left alone: we never remove data we cannot account for. Only ``ready`` snapshots
are listed.

The fields every backend keeps live in :class:`SnapshotRecord`; a backend subclasses it for what only it
needs (loopfile: ``method``, ``block_size``; rawdisk: ``sector_bytes``, ``data_bytes``) and names those
fields in :meth:`SnapshotRecord.extras_to_json` and :meth:`SnapshotRecord.extras_from_json`. The JSON is one
flat object, so a record written before this module existed reads back unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Self, TypeVar

import anyio
from loguru import logger

from backends import errors
from backends.base import Snapshot, is_snapshot_id
from backends.faults import fault_point
from backends.metadata import load_record, write_record
from backends.system import files

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


R = TypeVar("R", bound=SnapshotRecord)
#: Prefix of an image being deleted.
PENDING_PREFIX = files.TEMPORARY_PREFIX


class SnapshotStore(Generic[R]):
    """One snapshot directory: its ready records in memory, its files on disk."""

    def __init__(self, directory: str, record_type: type[R]) -> None:
        self._dir = os.path.abspath(directory)
        self._type = record_type
        self._ready: dict[str, R] = {}

    @property
    def directory(self) -> str:
        return self._dir

    def image(self, snapshot_id: str) -> str:
        return os.path.join(self._dir, snapshot_id + ".img")

    def meta(self, snapshot_id: str) -> str:
        return os.path.join(self._dir, snapshot_id + ".json")

    def _pending(self, snapshot_id: str) -> str:
        return os.path.join(self._dir, PENDING_PREFIX + snapshot_id + ".img")

    async def start(self) -> list[R]:
        """Finish interrupted deletions, load the ready snapshots; return the interrupted others (their files
        are not removed yet: the caller may have to thaw a source first)."""
        records = await anyio.to_thread.run_sync(self._prepare_and_scan)
        self._ready = {r.snapshot_id: r for r in records if r.state == READY}
        return [r for r in records if r.state != READY]

    def _prepare_and_scan(self) -> list[R]:
        try:
            files.ensure_directory(self._dir)
            if not files.check_writable(self._dir):
                logger.warning("the filesystem of {} is full: deletions work, snapshots are refused", self._dir)
        except OSError as exc:
            raise errors.Unavailable(f"the snapshot directory {self._dir} is not usable: {exc.strerror}") from exc
        files.remove_leftovers(self._dir, PENDING_PREFIX + "*.json")
        names = files.file_names(self._dir)
        for name in sorted(n for n in names if n.startswith(PENDING_PREFIX) and n.endswith(".img")):
            snapshot_id = name[len(PENDING_PREFIX):-len(".img")]
            if is_snapshot_id(snapshot_id):
                logger.warning("finishing the interrupted deletion of snapshot {}", snapshot_id)
                files.remove([self.meta(snapshot_id), os.path.join(self._dir, name)], sync=self._dir)
                names -= {name, snapshot_id + ".json"}
        records = []
        for name in sorted(names):
            if name.endswith(".json") and is_snapshot_id(name[:-5]):
                records.append(self._type.from_json(load_record(os.path.join(self._dir, name), SCHEMA)))
            elif name.endswith(".img") and name[:-4] + ".json" not in names:
                logger.warning("snapshot image {} in {} has no record; leaving it alone", name, self._dir)
        return records

    def get(self, snapshot_id: str) -> R | None:
        return self._ready.get(snapshot_id)

    def records(self) -> list[R]:
        return [self._ready[k] for k in sorted(self._ready)]

    async def begin(self, record: R) -> None:
        """Write the ``creating`` record before any byte of the image."""
        await anyio.to_thread.run_sync(write_record, self.meta(record.snapshot_id), record.to_json())

    async def finish(self, record: R) -> R:
        """Write the ``ready`` record; from now on the snapshot exists."""
        await anyio.to_thread.run_sync(write_record, self.meta(record.snapshot_id), record.to_json())
        self._ready[record.snapshot_id] = record
        return record

    async def remove(self, snapshot_id: str) -> None:
        """Remove both files (image first); absent files are fine."""
        await anyio.to_thread.run_sync(
            lambda: files.remove([self.image(snapshot_id), self.meta(snapshot_id)], sync=self._dir))

    async def delete(self, snapshot_id: str) -> bool:
        """Delete a ready snapshot, crash-safely and without needing free space. False when there is none."""
        record = self._ready.pop(snapshot_id, None)
        if record is None:
            return False
        try:
            await anyio.to_thread.run_sync(self._delete_files, snapshot_id)
        except BaseException:
            self._ready[snapshot_id] = record
            raise
        return True

    def _delete_files(self, snapshot_id: str) -> None:
        """Blocking: mark (rename the image), remove the record, then the image; one fsync of the directory."""
        pending = self._pending(snapshot_id)
        files.rename_if_present(self.image(snapshot_id), pending)
        fault_point("snapshot.delete.after_mark")
        files.remove([self.meta(snapshot_id), pending], sync=self._dir)
