"""Who uses a device on this node (filesystems on it, binds of its node), for detach, copies and single-writer.

Answers come from ``stat`` and one mountinfo read, no process. What is at one
particular path, and whether it is a volume's own, is :mod:`backends.nodeops`'s.
"""

from __future__ import annotations

import os

from loguru import logger

from backends.errors import BackendError
from backends.system import mount as mnt
from backends.system import reflink


async def device_number(device: str) -> int:
    """``st_rdev`` of a device node (0 when it does not exist)."""
    state = await mnt.path_state(device)
    return state.rdev if state.exists else 0


async def device_in_use(device: str) -> list[str]:
    """Mount points that use ``device``: filesystems on it, and binds of its device node."""
    return await _mounts_of(device, with_binds=True)


async def filesystem_mounts(device: str) -> list[str]:
    """Mount points of a filesystem on ``device`` (binds of the device node itself excluded)."""
    return await _mounts_of(device, with_binds=False)


async def _mounts_of(device: str, *, with_binds: bool) -> list[str]:
    rdev = await device_number(device)
    if not rdev:
        return []
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    node_names = _devtmpfs_names(device)
    found = []
    for entry in await mnt.mounts():
        bind = entry.fs_type == "devtmpfs"
        if (entry.major_minor == wanted and not bind) or (with_binds and bind and (
                entry.major_minor == wanted or entry.root in node_names)):
            found.append(entry.mount_point)
    return found


def _devtmpfs_names(device: str) -> set[str]:
    """How a bind of ``device``'s node shows in mountinfo: its path inside devtmpfs (mountinfo's root).

    A bind follows symlinks, so ``/dev/<vg>/<lv>`` (a link to ``../dm-3``) is bound as ``/dm-3``: the
    resolved node counts as well as the name given.
    """
    names = {"/" + os.path.basename(device)}
    resolved = os.path.realpath(device)
    if resolved.startswith("/dev/"):
        names.add(resolved[len("/dev"):])
    return names


async def thaw_after_crash(device: str | None, volume_id: str) -> None:
    """A copy of ``volume_id`` (on ``device``, None when not attached) was cut short: thaw the filesystem it
    may have left frozen. Failures are logged, not raised: start-up goes on."""
    mounts = await filesystem_mounts(device) if device is not None else []
    if not mounts:
        return
    try:  # every mount of the device shares one superblock: one thaw is enough
        if await reflink.thaw(mounts[0]):
            logger.warning("thawed {} of volume {}, left frozen by an interrupted copy", mounts[0], volume_id)
    except BackendError as exc:
        logger.error("cannot thaw {} of volume {}: {}", mounts[0], volume_id, exc)


def check_mount_options(options: tuple[str, ...] | list[str]) -> None:
    """Raise InvalidArgument for mount options a request must never carry (bind, remount, ...)."""
    mnt.parse_mount_options(options)
