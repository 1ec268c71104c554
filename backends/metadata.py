"""Versioned JSON records kept next to the data they describe.

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``,
fsync of the directory), so a crash leaves either the old or the new record,
never half of one. Records carry a ``schema`` number; :func:`load_record`
upgrades older ones through the migrations a caller registers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from backends.errors import CapacityExhausted, SystemFailure

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def write_record(path: str, record: Mapping[str, Any], *, sync_directory: bool = True) -> None:
    """Atomically replace ``path`` with ``record`` as JSON. Blocking: run in a thread.

    ``sync_directory=False`` leaves the rename's durability to the caller, which
    must fsync the directory itself before it reports success (one directory
    fsync then covers several renames).
    """
    directory = os.path.dirname(path) or "."
    data = json.dumps(record, sort_keys=True, indent=1).encode()
    try:
        _replace_atomically(directory, path, data, sync_directory)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full filesystem is "no room", not an internal error
            raise CapacityExhausted(f"no room to write metadata {path}: {exc.strerror}") from exc
        raise


def _replace_atomically(directory: str, path: str, data: bytes, sync_directory: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        try:
            view = memoryview(data)
            while view:  # a write to a nearly full filesystem may be short; never rename half a record
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_directory:
        fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    fsync_path(directory, os.O_DIRECTORY)


def fsync_path(path: str, flags: int = 0) -> None:
    """fsync the file (or, with ``os.O_DIRECTORY``, the directory) at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_record(path: str, schema: int, migrations: Mapping[int, Migration] | None = None) -> dict[str, Any]:
    """Read a record and migrate it to ``schema``. Blocking: run in a thread.

    ``migrations[n]`` turns a schema-``n`` record into a schema-``n+1`` one.
    A record from a newer driver than this one is refused rather than guessed at.
    """
    with open(path, "rb") as f:
        raw = f.read()
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
