"""Filesystem and block device sizes (statvfs and block ioctls, in a worker thread)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import anyio

from backends.system import _ioctl
from backends.system.errors import SyscallError


@dataclass(frozen=True)
class FsStats:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int

    @classmethod
    def from_statvfs(cls, st: os.statvfs_result) -> FsStats:
        unit = st.f_frsize or st.f_bsize
        return cls(
            total_bytes=st.f_blocks * unit,
            available_bytes=st.f_bavail * unit,
            used_bytes=(st.f_blocks - st.f_bfree) * unit,
            total_inodes=st.f_files,
            free_inodes=st.f_ffree,
            used_inodes=st.f_files - st.f_ffree,
        )


def _statvfs(path: str) -> os.statvfs_result:
    try:
        return os.statvfs(path)
    except OSError as exc:
        raise SyscallError.from_oserror("statvfs", path, exc) from exc


async def filesystem_stats(path: str) -> FsStats:
    """Usage of the filesystem holding ``path`` (``available`` is what non-root can still use)."""
    return FsStats.from_statvfs(await anyio.to_thread.run_sync(_statvfs, path))


def _guarded(path: str, call: str, request: int) -> int:
    try:
        if request == _ioctl.BLKGETSIZE64:
            return _ioctl.device_size(path)
        return _ioctl.device_int(path, request, call)
    except OSError as exc:  # the open itself
        raise SyscallError.from_oserror("open", path, exc) from exc


async def block_device_size(path: str) -> int:
    """Size of a block device in bytes (BLKGETSIZE64)."""
    return await anyio.to_thread.run_sync(_guarded, path, "BLKGETSIZE64", _ioctl.BLKGETSIZE64)


async def block_size(path: str) -> int:
    """Logical block (sector) size of a block device (BLKSSZGET)."""
    return await anyio.to_thread.run_sync(_guarded, path, "BLKSSZGET", _ioctl.BLKSSZGET)


async def physical_block_size(path: str) -> int:
    """Physical block size of a block device (BLKPBSZGET)."""
    return await anyio.to_thread.run_sync(_guarded, path, "BLKPBSZGET", _ioctl.BLKPBSZGET)
