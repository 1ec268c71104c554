"""Reading and writing through a published volume, the way a workload would."""

from __future__ import annotations

import errno
import os
import stat

import anyio

from e2e.conformance.config import AccessType
from e2e.files import read_at, write_at, write_file

MARKER_FILE = "conformance-marker"
BLOCK_SIZE = 4096


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def write_marker(target: str, access: AccessType, payload: bytes) -> None:
    """Write ``payload`` to a file in a mounted target, or at offset 0 of a block target."""
    if access is AccessType.BLOCK:
        await anyio.to_thread.run_sync(write_at, target, 0, payload.ljust(BLOCK_SIZE, b"\0"))
    else:
        await anyio.to_thread.run_sync(write_file, os.path.join(target, MARKER_FILE), payload)


async def write_random_marker(target: str, access: AccessType, length: int) -> bytes:
    """Write ``length`` random bytes as the marker (see :func:`write_marker`); returns them."""
    payload = os.urandom(length)
    await write_marker(target, access, payload)
    return payload


async def read_marker(target: str, access: AccessType, length: int) -> bytes:
    if access is AccessType.BLOCK:
        return await anyio.to_thread.run_sync(read_at, target, 0, length)
    return await anyio.to_thread.run_sync(_read_file, os.path.join(target, MARKER_FILE))


async def write_is_refused(target: str) -> bool:
    """True if creating a file in a mounted target fails because the mount is read-only."""
    try:
        await anyio.to_thread.run_sync(write_file, os.path.join(target, MARKER_FILE + "-ro"), b"x")
    except OSError as exc:
        return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return False


async def is_block_device(path: str) -> bool:
    st = await anyio.Path(path).stat()
    return stat.S_ISBLK(st.st_mode)
