"""Versioned JSON records kept next to the data they describe.

Writes are atomic (:func:`backends.system.files.replace_atomically`: temporary
file in the same directory, fsync, rename, fsync of the directory), so a crash
leaves either the old or the new record, never half of one. Records carry a ``schema`` number; :func:`load_record`
upgrades older ones through the migrations a caller registers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from backends.errors import SystemFailure
from backends.system import files

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def write_record(path: str, record: Mapping[str, Any], *, sync_directory: bool = True) -> None:
    """Atomically replace ``path`` with ``record`` as JSON. Blocking: run in a thread.

    A full filesystem raises CapacityExhausted ("no room to write ..."), never a half-written record.
    ``sync_directory=False`` leaves the rename's durability to the caller, which must fsync the directory
    itself before it reports success (one directory fsync then covers several renames).
    """
    files.replace_atomically(path, json.dumps(record, sort_keys=True, indent=1).encode(),
                             sync_directory=sync_directory)


def load_record(path: str, schema: int, migrations: Mapping[int, Migration] | None = None) -> dict[str, Any]:
    """Read a record and migrate it to ``schema``. Blocking: run in a thread.

    ``migrations[n]`` turns a schema-``n`` record into a schema-``n+1`` one.
    A record from a newer driver than this one is refused rather than guessed at.
    """
    raw = files.read_bytes(path)
    try:
        record: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise SystemFailure(f"metadata {path} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise SystemFailure(f"metadata {path} is not a JSON object")
    version = record.get("schema")
    if not isinstance(version, int):
        raise SystemFailure(f"metadata {path} has no schema number")
    if version > schema:
        raise SystemFailure(f"metadata {path} has schema {version}, newer than this driver's {schema}")
    while version < schema:
        step = (migrations or {}).get(version)
        if step is None:
            raise SystemFailure(f"metadata {path}: no migration from schema {version}")
        record = step(record)
        version += 1
        record["schema"] = version
    return record
