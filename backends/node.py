"""Node-side steps shared by every backend, each idempotent (converge to a state).

Every ``ensure_*`` first looks at what is there: already as asked -> success;
something else in the way -> a :mod:`backends.errors` exception that says what;
nothing -> do it. The happy paths use ``stat``/``statvfs`` only; mountinfo is
read (once) only to name what is in the way.

Never-format rule: :func:`ensure_formatted` runs mkfs only after a probe that is
clearly blank; any signature, a partition table, an ambiguous probe or a probe
that could not look means no mkfs. mkfs must not be torn by cancellation: the
caller runs it in a server-owned task group (see ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from loguru import logger

from backends.errors import DeviceNotBlank, InvalidArgument, PreconditionFailed, VolumeInUse
from backends.faults import fault_point
from backends.system import blkid, mkfs
from backends.system import fs as fs_tools
from backends.system import mount as mnt
from backends.system.runner import Runner

#: At most this many mounts stacked at one target are unmounted.
MAX_STACKED_MOUNTS = 32


async def _require_block_device(device: str) -> mnt.PathState:
    state = await mnt.path_state(device)
    if not state.exists:
        raise InvalidArgument(f"device {device} does not exist")
    if not state.is_block:
        raise InvalidArgument(f"{device} is not a block device")
    return state


def _describe(entry: mnt.MountInfo | None) -> str:
    if entry is None:
        return "something else"
    mode = "ro" if entry.readonly else "rw"
    root = "" if entry.root == "/" else f" (subdirectory {entry.root})"
    return f"{entry.source}{root} ({entry.fs_type}, {mode})"


def _mode(readonly: bool) -> str:
    return "read-only" if readonly else "read-write"


async def ensure_formatted(runner: Runner, device: str, fs_type: str, *, mkfs_options: Sequence[str] = (),
                           known_zeros: bool = False) -> bool:
    """Make sure ``device`` holds a ``fs_type`` filesystem; True when it formatted it.

    ``known_zeros``: the backend has proved the device reads as zeros everywhere (it holds nothing to lose),
    so the content probe is skipped; without that proof a device is formatted only when the probe finds it
    clearly blank.
    """
    mkfs.mkfs_argv(device, fs_type, mkfs_options)  # unknown type / bad options: fail before probing
    await _require_block_device(device)
    found = None if known_zeros else await blkid.probe(runner, device)
    if found is None or found.blank:
        await mkfs.make_filesystem(runner, device, fs_type, options=mkfs_options)
        fault_point("stage.after_mkfs")
        return True
    if not found.ambiguous and not found.pt_type and found.usage == "filesystem" and found.fs_type == fs_type:
        logger.debug("{dev} already holds {fs}", dev=device, fs=fs_type)
        return False
    raise DeviceNotBlank(f"{device} holds {found.description}; refusing to format it as {fs_type}")


async def ensure_mounted(
    device: str, target: str, fs_type: str, *, options: Sequence[str] = (), readonly: bool = False
) -> bool:
    """Mount ``device`` (a ``fs_type`` filesystem) at the directory ``target``; True when this call mounted it."""
    dev = await _require_block_device(device)
    here = await mnt.path_state(target)
    if not here.exists:
        await anyio.Path(target).mkdir(parents=True, exist_ok=True)
    elif here.mount_point:
        if here.dev == dev.rdev:
            mounted_ro = here.readonly
        else:  # maybe a filesystem with anonymous device numbers (btrfs), or something else
            entry = mnt.topmost(await mnt.mounts(), target)
            if entry is None or entry.source != device:
                raise VolumeInUse(f"{target} already has {_describe(entry)} mounted, not {device}")
            mounted_ro = entry.readonly
        if mounted_ro != readonly:
            raise VolumeInUse(f"{device} is already mounted at {target} {_mode(mounted_ro)}, not {_mode(readonly)}")
        return False
    elif not here.is_dir:
        raise InvalidArgument(f"mount target {target} exists and is not a directory")
    await mnt.mount(device, target, fs_type, options=filesystem_options(fs_type, options), readonly=readonly)
    return True


def filesystem_options(fs_type: str, options: Sequence[str]) -> list[str]:
    """``options`` plus what every volume of ``fs_type`` needs to mount.

    xfs refuses a second filesystem with a UUID it already has mounted, and every
    snapshot, restore and clone is a copy with its source's UUID on the same node (a
    local volume never leaves it): xfs volumes are mounted ``nouuid``.
    """
    if fs_type == "xfs" and "nouuid" not in options:
        return [*options, "nouuid"]
    return list(options)


async def _create_target(target: str, *, file: bool) -> None:
    path = anyio.Path(target)
    if file:
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.touch(mode=0o600, exist_ok=True)
    else:
        await path.mkdir(parents=True, exist_ok=True)


async def ensure_bind_mounted(
    source: str, target: str, *, readonly: bool = False, block: bool = False, options: Sequence[str] = ()
) -> None:
    """Bind ``source`` onto ``target``: a directory, or for ``block`` a device node onto a file.

    ``options`` are per-mount flags (nosuid, noexec, ...) applied to the bind mount.
    """
    origin = await mnt.path_state(source)
    if not origin.exists:
        raise PreconditionFailed(f"bind source {source} does not exist")
    if block and not origin.is_block:
        raise InvalidArgument(f"{source} is not a block device")
    if not block and not origin.is_dir:
        raise InvalidArgument(f"bind source {source} is not a directory")
    here = await mnt.path_state(target)
    if here.exists and here.same_object(origin):
        if here.readonly != readonly:
            raise VolumeInUse(f"{source} is already bound at {target} {_mode(here.readonly)}, not {_mode(readonly)}")
        return
    if here.exists and (here.mount_point or here.is_block):
        entry = mnt.topmost(await mnt.mounts(), target)
        raise VolumeInUse(f"{target} already has {_describe(entry)} mounted, not {source}")
    if not here.exists:
        await _create_target(target, file=block)
    elif block and here.is_dir:
        raise InvalidArgument(f"block publish target {target} is a directory, not a file")
    elif not block and not here.is_dir:
        raise InvalidArgument(f"publish target {target} exists and is not a directory")
    await mnt.bind_mount(source, target, readonly=readonly, options=options)


async def ensure_unmounted(target: str, *, remove: bool = True) -> None:
    """Unmount everything stacked at ``target``, then remove it (dir or file) if ``remove``.

    A missing target is success; a busy mount raises VolumeInUse; a directory
    that still holds files after the unmounts is left alone (PreconditionFailed).
    """
    await mnt.clear_target(target, remove=remove, limit=MAX_STACKED_MOUNTS)


async def ensure_filesystem_grown(runner: Runner, device: str, mount_point: str, fs_type: str) -> bool:
    """Grow the filesystem at ``mount_point`` to fill ``device``; True when it grew."""
    here = await mnt.path_state(mount_point)
    if not here.exists or not here.mount_point:
        raise PreconditionFailed(f"{mount_point} is not a mounted filesystem; cannot grow it online")
    return await fs_tools.grow_filesystem(runner, device, mount_point, fs_type)
