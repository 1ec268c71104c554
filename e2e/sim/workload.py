"""What a pod does with its volume: write seeded data, read it back, compare. Runs in worker threads."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import anyio

from e2e.files import read_at, write_at, write_file
from e2e.sim.stats import Stats

MIB = 1 << 20
#: Block volumes are written past the first MiB, away from anything a probe might look at.
BLOCK_OFFSET = MIB


class DataMismatch(AssertionError):
    """Bytes read back differ from what was written."""


@dataclass(frozen=True)
class Written:
    path: Path
    block: bool
    offset: int
    length: int
    digest: str
    name: str = "data.bin"


def _payload(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def _write(path: Path, block: bool, data: bytes, name: str, offset: int) -> None:
    if block:
        write_at(path, offset, data)
    else:
        write_file(path / name, data)


def _read(written: Written) -> bytes:
    return read_at(written.path if written.block else written.path / written.name, written.offset, written.length)


async def write(path: Path, *, block: bool, seed: int, length: int = MIB, name: str = "data.bin",
                offset: int = BLOCK_OFFSET) -> Written:
    data = _payload(seed, length)
    await anyio.to_thread.run_sync(_write, path, block, data, name, offset)
    return Written(path, block, offset if block else 0, length, hashlib.sha256(data).hexdigest(), name)


async def verify(written: Written, stats: Stats, *, path: Path | None = None) -> None:
    """Read back (optionally through another pod's ``path``) and compare digests."""
    source = Written(path or written.path, written.block, written.offset, written.length, written.digest,
                     written.name)
    data = await anyio.to_thread.run_sync(_read, source)
    if hashlib.sha256(data).hexdigest() != written.digest:
        raise DataMismatch(f"data read from {source.path} differs from what was written")
    stats.verified(len(data))


async def write_denied(path: Path, *, block: bool) -> str:
    """Try to write; return the errno name if refused, '' if the write went through."""
    try:
        await anyio.to_thread.run_sync(_write, path, block, b"must not land", "forbidden.bin", BLOCK_OFFSET)
    except OSError as exc:
        return os.strerror(exc.errno or 0)
    return ""
