"""Consistent copies of live volumes: freeze → copy → thaw, for snapshots, clones and restores.

A copy of a volume that is in use must not be torn. When the volume's filesystem is mounted, it is frozen
(FIFREEZE: dirty data written, writers held) for the copy and thawed on every way out, cancellation included;
a crash in between leaves it frozen, and the backend's start-up thaws what an interrupted copy left
(:func:`thaw_after_crash`). A raw block volume in use has no filesystem to freeze: a copy is consistent only
when it is atomic (a reflink clone of the whole image, which the kernel does under the file's lock), so
otherwise it is refused. A volume that is not attached has no writers: its copy needs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from loguru import logger

from backends import errors, paths
from backends.system import reflink


@contextlib.asynccontextmanager
async def held_still(volume_id: str, device: str | None, *, atomic_copy: bool = False) -> AsyncIterator[None]:
    """Hold volume ``volume_id`` (attached as ``device``, None when it is not) still for the copy in the body.

    ``atomic_copy``: the copy is one atomic operation (a reflink clone), so a raw block device in use is fine.
    """
    if device is None:
        yield
        return
    mounts = await paths.filesystem_mounts(device)
    if mounts:
        async with reflink.frozen(mounts[0], await paths.device_number(device)):
            yield
        return
    if not atomic_copy:
        users = await paths.device_in_use(device)
        if users:
            raise errors.VolumeInUse(
                f"block volume {volume_id} is in use at {', '.join(users)} and cannot be copied atomically here: "
                "a copy would not be consistent; unpublish it first")
    yield


async def thaw_after_crash(volume_id: str, device: str | None) -> None:
    """A copy of ``volume_id`` (on ``device``, None when not attached) was cut short: thaw the filesystem it
    may have left frozen. Failures are logged, not raised: start-up goes on."""
    mounts = await paths.filesystem_mounts(device) if device is not None else []
    if not mounts:
        return
    try:  # every mount of the device shares one superblock: one thaw is enough
        if await reflink.thaw(mounts[0]):
            logger.warning("thawed {} of volume {}, left frozen by an interrupted copy", mounts[0], volume_id)
    except errors.BackendError as exc:
        logger.error("cannot thaw {} of volume {}: {}", mounts[0], volume_id, exc)
