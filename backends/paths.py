"""What is at a path on this node: which device is mounted or bound there, its usage.

Answers come from ``stat``/``statvfs`` (no process, at most one mountinfo read),
because they sit on the hot path of NodeUnstage, NodePublish and NodeGetVolumeStats.
"""

from __future__ import annotations

import errno
import os

from backends.system import mount as mnt
from backends.system.errors import SyscallError
from backends.system.stats import FsStats, block_device_size, filesystem_stats


async def mounted_device(path: str) -> int | None:
    """The device number a path exposes: a block device bound onto a file, or the
    filesystem mounted at a directory. ``None`` when nothing is mounted there (or the path vanished while we
    looked: a racing unpublish)."""
    try:
        state = await mnt.path_state(path)
    except SyscallError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    if not state.exists:
        return None
    if state.is_block:
        return state.rdev
    if state.mount_point:
        return state.dev
    return None


async def device_number(device: str) -> int:
    """``st_rdev`` of a device node (0 when it does not exist)."""
    state = await mnt.path_state(device)
    return state.rdev if state.exists else 0


async def path_usage(path: str) -> FsStats | None:
    """Bytes (and inodes) of the volume at ``path``; for a block device only its size. None if absent
    (including removed while we looked: a racing unpublish)."""
    try:
        state = await mnt.path_state(path)
        if not state.exists:
            return None
        if state.is_block:
            size = await block_device_size(path)
            return FsStats(total_bytes=size, available_bytes=0, used_bytes=0, total_inodes=0, free_inodes=0,
                           used_inodes=0)
        return await filesystem_stats(path)
    except SyscallError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


async def mounted_fs_type(path: str) -> str:
    """The filesystem type mounted at ``path`` ("" for none, or for a bound block device)."""
    entry = await mnt.find_mount(path)
    if entry is None or entry.fs_type == "devtmpfs":
        return ""
    return entry.fs_type


async def device_in_use(device: str) -> list[str]:
    """Mount points that use ``device``: filesystems on it, and binds of its device node."""
    rdev = await device_number(device)
    if not rdev:
        return []
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    node_name = "/" + os.path.basename(device)
    return [
        e.mount_point for e in await mnt.mounts()
        if e.major_minor == wanted or (e.fs_type == "devtmpfs" and e.root == node_name)
    ]


def check_mount_options(options: tuple[str, ...] | list[str]) -> None:
    """Raise InvalidArgument for mount options a request must never carry (bind, remount, ...)."""
    mnt.parse_mount_options(options)
