"""Durable writes and reads of files and devices, as a workload makes them: a write counts once it is fsynced.

Shared by the harnesses (a workload's data, a conformance marker, an exhaustion fill) and the tests.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path | str, data: bytes) -> None:
    """Create or replace ``path`` with ``data``, fsynced."""
    _write_fsynced(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644), 0, data)


def write_at(path: Path | str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of an existing file or device, fsynced."""
    _write_fsynced(os.open(path, os.O_WRONLY), offset, data)


def _write_fsynced(fd: int, offset: int, data: bytes) -> None:
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: Path | str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
