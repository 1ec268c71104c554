"""The shared snapshot record: records the backends wrote before it existed still load and write back unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.loopfile import records as loopfile
from backends.metadata import load_record, write_record
from backends.rawdisk import snapshots as rawdisk_snapshots
from backends.snapshots import SCHEMA, SnapshotRecord

COMMON = (
    ' "name": "snap-a",\n "schema": 1,\n "size_bytes": 33554432,\n'
    ' "snapshot_id": "lcs-0123456789abcdef0123456789abcdef",\n'
    ' "source_volume_id": "lcv-0123456789abcdef0123456789abcdef",\n "state": "ready"\n}'
)
CREATED = ' "created_at": "2026-11-26T19:00:00+00:00",\n'
#: Ready snapshot records exactly as each backend wrote them before the record type was shared.
LOOPFILE_JSON = '{\n "block_size": 4096,\n' + CREATED + ' "method": "reflink",\n' + COMMON
RAWDISK_JSON = '{\n' + CREATED + ' "data_bytes": 8192,\n' + COMMON.replace(
    ' "schema": 1,\n', ' "schema": 1,\n "sector_bytes": 4096,\n')


@pytest.mark.parametrize(("record_type", "stored", "extras"), [
    (loopfile.SnapshotRecord, LOOPFILE_JSON, {"method": "reflink", "block_size": 4096}),
    (rawdisk_snapshots.SnapshotRecord, RAWDISK_JSON, {"sector_bytes": 4096, "data_bytes": 8192}),
])
def test_records_written_before_load_and_write_back_byte_for_byte(
        tmp_path: Path, record_type: type[SnapshotRecord], stored: str, extras: dict[str, object]) -> None:
    path = tmp_path / "snap.json"
    path.write_text(stored)
    record = record_type.from_json(load_record(str(path), SCHEMA))
    assert {key: getattr(record, key) for key in extras} == extras
    snapshot = record.to_snapshot()
    assert (snapshot.size_bytes, snapshot.ready_to_use) == (32 << 20, True)
    write_record(str(path), record.to_json())
    assert path.read_text() == stored
