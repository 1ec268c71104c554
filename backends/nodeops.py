"""The node side of every backend: stage, unstage, publish, unpublish, stats and expand, behind one rule.

**The rule.** A request names paths; it never proves them. Before :class:`NodeOps` unmounts, removes, binds from,
grows or formats anything at a path, it proves

* that the path lies strictly below an allowed kubelet directory (never the directory itself) and neither is nor
  contains the driver's own block directory (:class:`PathPolicy`, a pure check), and goes through no symbolic link;
* that what is mounted there is the volume's own (:func:`look`): its filesystem (the device number of its attached
  device, or a bind of its staging mount), a bind of its device node, or the bind of its own block directory.

An id the backend does not know is NOT_FOUND before any path is looked at; a path that holds something else is
FAILED_PRECONDITION with what is there in the message, and it is left exactly as it was. Each method raises the
final domain error at its source (``csi/errors.py`` maps it): the servicer has no error table of its own.

**Where a staged block volume lives.** The device node is bound onto ``<block dir>/<volume id>/device``, a file in
a directory only the driver writes (``--block-dir``; by default below the first kubelet directory, which the node
DaemonSet mounts with bidirectional propagation, so a driver restarted in a new container sees its binds again).
That per-volume directory is then bound, read-only, onto the staging path. So the staging path proves by inode
identity that this volume is staged there; nothing inside it can be a workload's; publish binds the device node from
the driver's directory, never from a name inside a request's path; and everything survives a driver restart
because it is kernel state, not a record of ours (a reboot clears the binds and kubelet stages again). A filesystem
volume's staging path holds its filesystem and nothing else of the driver's: no file in it is ever touched. Drivers
before this one bound a block device onto ``<staging>/device``; such a bind, once proven to be the volume's own
device, is still published from and unstaged, so an upgrade strands no volume.

**Steps.** The ``ensure_*`` functions converge one step to a state (already there: nothing to do; something else in
the way: the error that says what). :class:`NodeOps` calls them only after the proof. Never-format rule:
:func:`ensure_formatted` runs mkfs only after a probe that is clearly blank (or the backend's proof that the device
reads as zeros); mkfs must not be torn by cancellation, so callers run stage in a server-owned task group.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from loguru import logger

from backends import paths
from backends.base import Backend, Condition, RequestedAccess
from backends.errors import (
    AlreadyExists,
    BackendError,
    DeviceNotBlank,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    VolumeInUse,
    VolumeNotFound,
    WrongNode,
)
from backends.faults import fault_point
from backends.ids import is_driver_volume_id
from backends.system import blkid, mkfs
from backends.system import fs as fs_tools
from backends.system import mount as mnt
from backends.system.errors import SyscallError
from backends.system.runner import Runner
from backends.system.stats import FsStats, block_device_size, filesystem_stats

#: What stat says of a path that is not there.
ABSENT = mnt.PathState(exists=False)
#: At most this many of a volume's own mounts stacked at one path are unmounted.
MAX_STACKED_MOUNTS = 32
#: The file in a volume's block directory onto which its device node is bound.
DEVICE_FILE = "device"


# ------------------------------------------------------------------ where a request may point


def _below(path: str, root: str) -> bool:
    """``path`` lies strictly below ``root`` (both absolute and normalised)."""
    return path != root and path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class PathPolicy:
    """Where a request may name a path: strictly below one of ``allowed`` (anywhere when there are none), and
    never at, inside or above one of ``reserved`` (the driver's own directories). Pure: no I/O."""

    allowed: tuple[str, ...] = ()
    reserved: tuple[str, ...] = ()

    def problem(self, path: str) -> str:
        """Why a request may not name ``path``; "" when it may."""
        if not os.path.isabs(path) or os.path.normpath(path) != path or path.startswith("//"):
            return "must be an absolute, normalised path"
        if path == "/":
            return "must not be the root directory"
        if self.allowed and not any(_below(path, root) for root in self.allowed):
            return f"must lie strictly below the kubelet directory ({', '.join(self.allowed)})"
        for own in self.reserved:
            if path == own or _below(path, own) or _below(own, path):
                return f"must neither be, hold nor lie inside the driver's own directory {own}"
        return ""

    def admits(self, path: str) -> bool:
        return not self.problem(path)

    def require(self, path: str, what: str) -> str:
        problem = self.problem(path)
        if problem:
            raise InvalidArgument(f"{what} {path[:200]!r} {problem}")
        return path


# ------------------------------------------------------------------ what is at a path


@dataclass(frozen=True)
class Own:
    """What of one volume is on this node now; every proof compares against this."""

    volume_id: str
    #: The attached device (None: not attached) and its device number.
    device: str | None = None
    rdev: int = 0
    #: The driver-owned block directory of the volume, and what stat says of it.
    stage_dir: str = ""
    stage_dir_state: mnt.PathState = ABSENT

    @property
    def device_file(self) -> str:
        return os.path.join(self.stage_dir, DEVICE_FILE)


class Holds(enum.Enum):
    NOTHING = "nothing mounted"
    FILESYSTEM = "the volume's filesystem"
    DEVICE = "a bind of the volume's device"
    BLOCK_STAGE = "the volume's block stage"
    OTHER = "something else"


@dataclass(frozen=True)
class Sight:
    """What :func:`look` found at a path."""

    path: str
    holds: Holds
    state: mnt.PathState
    #: For OTHER: what is there, in words.
    what: str = ""
    #: The mountinfo entry, when it had to be read.
    entry: mnt.MountInfo | None = None

    @property
    def words(self) -> str:
        return self.what or self.holds.value


def describe(entry: mnt.MountInfo) -> str:
    mode = "ro" if entry.readonly else "rw"
    root = "" if entry.root == "/" else f" (its {entry.root})"
    return f"{entry.source}{root} ({entry.fs_type}, {mode})"


async def _same_device(source: str, device: str) -> bool:
    if source == device:
        return True
    return source.startswith("/dev/") and await mnt.canonical(source) == await mnt.canonical(device)


async def look(path: str, own: Own) -> Sight:
    """Classify what is at ``path`` against the volume ``own``: the one place a path is proven the volume's.

    stat answers the common cases; mountinfo is read only for what stat cannot tell apart (a bind from the same
    filesystem, btrfs's anonymous device numbers, a plain directory). A path removed while we looked is NOTHING.
    """
    try:
        state = await mnt.path_state(path)
    except SyscallError as exc:
        if exc.errno != errno.ENOENT:
            raise
        state = ABSENT
    if not state.exists:
        return Sight(path, Holds.NOTHING, state)
    if state.is_block:
        if state.mount_point and own.rdev and state.rdev == own.rdev:
            return Sight(path, Holds.DEVICE, state)
        kind = "a bind of block device" if state.mount_point else "the device node of block device"
        return Sight(path, Holds.OTHER, state, f"{kind} {state.major_minor}")
    if state.is_dir and state.same_object(own.stage_dir_state):
        return Sight(path, Holds.BLOCK_STAGE, state)
    if state.is_dir and state.mount_point and own.rdev and state.dev == own.rdev:
        return Sight(path, Holds.FILESYSTEM, state)
    entry = mnt.topmost(await mnt.mounts(), path)
    if entry is None:
        if state.mount_point:
            return Sight(path, Holds.OTHER, state, f"a mount of device {os.major(state.dev)}:{os.minor(state.dev)}")
        return Sight(path, Holds.NOTHING, state)
    if own.device and state.is_dir and await _same_device(entry.source, own.device):
        return Sight(path, Holds.FILESYSTEM, state, entry=entry)
    return Sight(path, Holds.OTHER, state, describe(entry), entry)


# ------------------------------------------------------------------ steps, each converging to one state


async def _require_block_device(device: str) -> mnt.PathState:
    state = await mnt.path_state(device)
    if not state.exists:
        raise InvalidArgument(f"device {device} does not exist")
    if not state.is_block:
        raise InvalidArgument(f"{device} is not a block device")
    return state


def _mode(readonly: bool) -> str:
    return "read-only" if readonly else "read-write"


async def ensure_formatted(runner: Runner, device: str, fs_type: str, *, mkfs_options: Sequence[str] = (),
                           known_zeros: bool = False, holds_data: bool = False) -> bool:
    """Make sure ``device`` holds a ``fs_type`` filesystem; True when it formatted it.

    ``known_zeros``: the backend has proved the device reads as zeros everywhere (it holds nothing to lose),
    so the content probe is skipped; without that proof a device is formatted only when the probe finds it
    clearly blank. ``holds_data``: the backend knows the device has held data (raw data carries no signature,
    so a blank probe proves nothing): it is never formatted, only a filesystem of ``fs_type`` is accepted.
    """
    mkfs.mkfs_argv(device, fs_type, mkfs_options)  # unknown type / bad options: fail before probing
    await _require_block_device(device)
    found = None if known_zeros else await blkid.probe(runner, device)
    if (found is None or found.blank) and holds_data:
        raise DeviceNotBlank(f"{device} has held data that carries no signature (raw block data, say); refusing "
                             f"to format it as {fs_type}")
    if found is None or found.blank:
        await mkfs.make_filesystem(runner, device, fs_type, options=mkfs_options)
        fault_point("stage.after_mkfs")
        return True
    if not found.ambiguous and not found.pt_type and found.usage == "filesystem" and found.fs_type == fs_type:
        logger.debug("{dev} already holds {fs}", dev=device, fs=fs_type)
        return False
    raise DeviceNotBlank(f"{device} holds {found.description}; refusing to format it as {fs_type}")


async def _require_vacant(path: str, here: mnt.PathState, *, directory: bool) -> None:
    """``path`` may be mounted onto: absent, or an empty directory (``directory``) or empty regular file."""
    if not here.exists:
        return
    if directory and not here.is_dir:
        raise InvalidArgument(f"{path} exists and is not a directory")
    if not directory and here.is_dir:
        raise InvalidArgument(f"{path} is a directory, not a file to bind a block device onto")
    if not await mnt.is_empty(path):
        raise PreconditionFailed(f"{path} is not empty: mounting over it would hide what it holds")


async def ensure_mounted(
    device: str, target: str, fs_type: str, *, options: Sequence[str] = (), readonly: bool = False
) -> bool:
    """Mount ``device`` (a ``fs_type`` filesystem) at the directory ``target``; True when this call mounted it.

    The same mount already there is success; with the other read-only flag or filesystem it is ALREADY_EXISTS;
    anything else mounted there, or a directory that is not empty, is FAILED_PRECONDITION.
    """
    dev = await _require_block_device(device)
    here = await mnt.path_state(target)
    entry = mnt.topmost(await mnt.mounts(), target) if here.exists else None
    if entry is not None or here.mount_point:
        same = here.dev == dev.rdev or (entry is not None and await _same_device(entry.source, device))
        if not same:
            raise VolumeInUse(f"{target} already has {describe(entry) if entry else 'a mount'}, not {device}")
        if here.readonly != readonly:
            raise AlreadyExists(f"{device} is already mounted at {target} {_mode(here.readonly)}, "
                                f"not {_mode(readonly)}")
        if entry is not None and entry.fs_type != fs_type:
            raise AlreadyExists(f"{device} is already mounted at {target} as {entry.fs_type}, not {fs_type}")
        return False
    await _require_vacant(target, here, directory=True)
    await mnt.create(target)
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


async def ensure_bind_mounted(
    source: str, target: str, *, readonly: bool = False, block: bool = False, options: Sequence[str] = ()
) -> None:
    """Bind ``source`` onto ``target``: a directory, or for ``block`` a device node onto a file (created when
    absent). ``options`` are per-mount flags (nosuid, noexec, ...) applied to the bind mount.

    The same bind already there is success; with the other read-only flag it is ALREADY_EXISTS; anything else
    mounted there, or a target that is not empty, is FAILED_PRECONDITION.
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
            raise AlreadyExists(f"{source} is already bound at {target} {_mode(here.readonly)}, "
                                f"not {_mode(readonly)}")
        return
    if here.exists and (here.mount_point or here.is_block):
        entry = mnt.topmost(await mnt.mounts(), target)
        raise VolumeInUse(f"{target} already has {describe(entry) if entry else 'a mount'}, not {source}")
    await _require_vacant(target, here, directory=not block)
    await mnt.create(target, file=block, mode=0o600 if block else 0o750)
    await mnt.bind_mount(source, target, readonly=readonly, options=options)


async def ensure_filesystem_grown(runner: Runner, device: str, mount_point: str, fs_type: str) -> bool:
    """Grow the filesystem at ``mount_point`` to fill ``device``; True when it grew."""
    here = await mnt.path_state(mount_point)
    if not here.exists or not here.mount_point:
        raise PreconditionFailed(f"{mount_point} is not a mounted filesystem; cannot grow it online")
    return await fs_tools.grow_filesystem(runner, device, mount_point, fs_type)


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


# ------------------------------------------------------------------ the node's operations


@dataclass(frozen=True)
class VolumeStats:
    usage: FsStats
    condition: Condition


class NodeOps:
    """Every node call of one backend, each proving what it touches first (the rule in the module docstring)."""

    def __init__(self, backend: Backend, runner: Runner, *, block_dir: str, kubelet_dirs: Sequence[str] = ()) -> None:
        if not os.path.isabs(block_dir):
            raise InvalidArgument(f"the block directory must be an absolute path, not {block_dir!r}")
        self.backend = backend
        self.runner = runner
        self.block_dir = os.path.normpath(block_dir)
        self.policy = PathPolicy(tuple(os.path.normpath(d) for d in kubelet_dirs), (self.block_dir,))

    # -- proofs ------------------------------------------------------------------------------------
    async def _require(self, volume_id: str) -> None:
        """NOT_FOUND for an id this driver never issued or whose volume is gone; nothing is looked at before."""
        if not is_driver_volume_id(volume_id):  # with or without its pool: NodeOps sees the ids the CO holds
            raise VolumeNotFound(volume_id[:200])
        await self.backend.require_volume(volume_id)

    async def _own(self, volume_id: str) -> Own:
        device = await self.backend.device_path(volume_id)
        rdev = (await mnt.path_state(device)).rdev if device is not None else 0
        stage_dir = os.path.join(self.block_dir, volume_id)
        return Own(volume_id, device, rdev, stage_dir, await mnt.path_state(stage_dir))

    async def _at(self, volume_id: str, path: str, what: str) -> tuple[Own, Sight]:
        """The policy, the lookup, then what is at ``path``, in that order: the start of every call on a path."""
        self.policy.require(path, what)
        await self._require(volume_id)
        own = await self._own(volume_id)
        return own, await self._look_at(path, what, own)

    async def _look_at(self, path: str, what: str, own: Own) -> Sight:
        here = await look(path, own)
        if here.state.through_symlink:
            raise InvalidArgument(f"{what} {path} goes through a symbolic link")
        return here

    async def _legacy_device_bind(self, staging: str, own: Own) -> str | None:
        """``<staging>/device`` when an earlier driver bound the volume's own device there, else None."""
        legacy = os.path.join(staging, DEVICE_FILE)
        return legacy if (await look(legacy, own)).holds is Holds.DEVICE else None

    async def _block_stages(self, own: Own) -> list[str]:
        """Every mount point of the volume's block directory (its block stages), from one mountinfo read."""
        if not own.stage_dir_state.exists:
            return []
        dev = own.stage_dir_state.dev
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        found = []
        for entry in await mnt.mounts():
            candidate = entry.major_minor == wanted and entry.root.endswith("/" + own.volume_id)
            if candidate and (await mnt.path_state(entry.mount_point)).same_object(own.stage_dir_state):
                found.append(entry.mount_point)
        return found

    async def _unmount_while(self, path: str, own: Own, *kinds: Holds) -> Sight:
        """Unmount ``path`` while what is on top there is one of ``kinds`` of the volume's; what is left."""
        for _ in range(MAX_STACKED_MOUNTS):
            here = await look(path, own)
            if here.holds not in kinds or not await mnt.unmount(path):
                return here
        raise PreconditionFailed(f"more than {MAX_STACKED_MOUNTS} mounts of volume {own.volume_id} are stacked "
                                 f"at {path}")

    async def _clear_stage_dir(self, own: Own) -> None:
        """Undo the volume's block directory: the device bind (ours by construction, whatever device it shows),
        the file, the directory."""
        for _ in range(MAX_STACKED_MOUNTS):
            state = await mnt.path_state(own.device_file)
            if not (state.exists and state.mount_point) or not await mnt.unmount(own.device_file):
                break
        await mnt.remove_empty(own.device_file)
        await mnt.remove_empty(own.stage_dir)

    # -- stage / unstage ---------------------------------------------------------------------------
    async def stage(self, volume_id: str, staging: str, access: RequestedAccess, *,
                    attached_to: str | None = None) -> None:
        """Attach the device and mount its filesystem (format it first only when blank), or bind the device
        into the volume's block directory and that onto ``staging``. ``attached_to``: the node the publish
        context names."""
        own, here = await self._at(volume_id, staging, "staging_target_path")
        if attached_to is not None and attached_to != self.backend.node_id:
            raise WrongNode(f"the volume was attached to node {attached_to!r}, not to this node "
                            f"({self.backend.node_id!r})")
        expected = Holds.BLOCK_STAGE if access.block else Holds.FILESYSTEM
        if here.holds is Holds.OTHER:
            raise PreconditionFailed(f"staging path {staging} holds {here.what}, not volume {volume_id}")
        if here.holds not in (Holds.NOTHING, expected):
            raise AlreadyExists(f"staging path {staging} already holds {here.holds.value}, which is not a "
                                f"{'block' if access.block else 'filesystem'} stage")
        if here.holds is Holds.NOTHING:
            await _require_vacant(staging, here.state, directory=True)
        fresh = own.device is None
        device = await self.backend.attach(volume_id, readonly=access.read_only)
        fault_point("stage.after_attach")
        try:
            if access.block:
                await self._stage_block(own, device, staging, readonly=access.read_only)
            else:
                await self._stage_filesystem(own, device, staging, access, fresh=fresh)
        except BaseException:
            if fresh:  # this call attached the device: undo all of it; the stage's own error is what the CO sees
                with anyio.CancelScope(shield=True):
                    await self._undo_attach(volume_id, staging)
            raise

    async def _stage_block(self, own: Own, device: str, staging: str, *, readonly: bool) -> None:
        await mnt.create(own.stage_dir, mode=0o700)
        rdev = (await mnt.path_state(device)).rdev
        for _ in range(MAX_STACKED_MOUNTS):  # a bind left from an earlier device of the volume: ours, and stale
            state = await mnt.path_state(own.device_file)
            stale = state.exists and state.mount_point and state.rdev != rdev
            if not stale or not await mnt.unmount(own.device_file):
                break
        await ensure_bind_mounted(device, own.device_file, readonly=readonly, block=True)
        await ensure_bind_mounted(own.stage_dir, staging, readonly=True)

    async def _stage_filesystem(self, own: Own, device: str, staging: str, access: RequestedAccess, *,
                                fresh: bool) -> None:
        """``fresh``: this call attached the device, so nothing has used it since."""
        if not access.read_only:
            zeros = fresh and await self.backend.reads_as_zeros(own.volume_id)
            held = not zeros and await self.backend.may_hold_data(own.volume_id)
            await ensure_formatted(self.runner, device, access.fs_type, known_zeros=zeros, holds_data=held)
        try:
            mounted = await ensure_mounted(device, staging, access.fs_type, options=access.mount_flags,
                                           readonly=access.read_only)
        except SyscallError as exc:
            raise await self._why_unmountable(own.volume_id, device, access, exc) from exc
        try:
            fault_point("stage.after_mount")
            if not access.read_only:
                # A volume restored or cloned into a larger size carries its source's smaller filesystem.
                await ensure_filesystem_grown(self.runner, device, staging, access.fs_type)
        except BaseException:
            if mounted:  # undo only what this call did; an earlier stage's mount stays
                with anyio.CancelScope(shield=True):
                    await mnt.unmount(staging)
            raise

    async def _why_unmountable(self, volume_id: str, device: str, access: RequestedAccess,
                               exc: SyscallError) -> BackendError:
        """The cause of a failed mount when the device tells it (no filesystem, another one), else ``exc``."""
        if exc.errno != errno.EINVAL:
            return exc
        try:
            found = await blkid.probe(self.runner, device)
        except BackendError:
            return exc
        if found.blank:
            hint = "; a read-only stage cannot make one" if access.read_only else ""
            return PreconditionFailed(f"volume {volume_id} ({device}) holds no filesystem yet{hint}")
        if found.fs_type and found.fs_type != access.fs_type:
            return DeviceNotBlank(f"volume {volume_id} ({device}) holds {found.description}, not {access.fs_type}")
        return exc

    async def _undo_attach(self, volume_id: str, staging: str) -> None:
        try:
            own = await self._own(volume_id)
            await self._unmount_while(staging, own, Holds.FILESYSTEM, Holds.BLOCK_STAGE)
            await self._clear_stage_dir(own)
            await self.backend.detach(volume_id)
        except Exception as exc:  # reported, never raised over the original error
            logger.warning("volume {} stays attached after a failed stage: {}", volume_id, exc)

    async def unstage(self, volume_id: str, staging: str) -> None:
        """Undo the stage at ``staging`` and detach; already undone is success. Refused, changing nothing,
        while the volume is still published or ``staging`` holds anything but the volume's stage."""
        own, here = await self._at(volume_id, staging, "staging_target_path")
        if here.holds in (Holds.OTHER, Holds.DEVICE):
            raise PreconditionFailed(f"staging path {staging} holds {here.words}, not the stage of volume "
                                     f"{volume_id}: left alone")
        legacy = await self._legacy_device_bind(staging, own) if here.holds is Holds.NOTHING else None
        ours = {own.device_file, *([staging] if here.holds is Holds.FILESYSTEM else []), *([legacy] if legacy else [])}
        users = [p for p in await paths.device_in_use(own.device) if p not in ours] if own.device else []
        if users and (here.holds is not Holds.NOTHING or legacy):
            raise VolumeInUse(f"volume {volume_id} is still published at {', '.join(users)}")
        if users:
            raise VolumeInUse(f"volume {volume_id} is not staged at {staging}; it is mounted at {', '.join(users)}")
        elsewhere = [p for p in await self._block_stages(own) if p != staging]
        if elsewhere:
            raise VolumeInUse(f"volume {volume_id} is staged at {', '.join(elsewhere)}, not at {staging}")
        await self._unmount_while(staging, own, Holds.FILESYSTEM, Holds.BLOCK_STAGE)
        if legacy:
            await self._unmount_while(legacy, own, Holds.DEVICE)
            await mnt.remove_empty(legacy)
        await self._clear_stage_dir(own)
        await self.backend.detach(volume_id)

    # -- publish / unpublish -----------------------------------------------------------------------
    async def publish(self, volume_id: str, staging: str, target: str, access: RequestedAccess, *,
                      readonly: bool = False) -> None:
        """Bind the volume's stage at ``staging`` onto ``target`` (a directory, or a file for block)."""
        self.policy.require(target, "target_path")
        if staging:
            self.policy.require(staging, "staging_target_path")
        await self._require(volume_id)
        if not staging:  # STAGE_UNSTAGE_VOLUME is advertised: publish needs a stage
            raise PreconditionFailed("staging_target_path is required: the volume must be staged first")
        own = await self._own(volume_id)
        source = await self._staged_source(own, staging, block=access.block)
        here = await self._look_at(target, "target_path", own)
        if here.holds is Holds.OTHER:
            raise PreconditionFailed(f"target path {target} holds {here.what}, not volume {volume_id}")
        if here.holds not in (Holds.NOTHING, Holds.DEVICE if access.block else Holds.FILESYSTEM):
            raise AlreadyExists(f"target path {target} already holds {here.holds.value}, which is not a "
                                f"{'block' if access.block else 'filesystem'} publish")
        if access.single_writer and own.device is not None:
            others = [p for p in await paths.device_in_use(own.device) if p not in (source, target)]
            if others:
                raise PreconditionFailed(
                    f"volume {volume_id} is single-writer and already published at {', '.join(others)}")
        await ensure_bind_mounted(source, target, readonly=readonly or access.read_only, block=access.block,
                                  options=access.mount_flags)

    async def _staged_source(self, own: Own, staging: str, *, block: bool) -> str:
        """What publish binds from: the staging mount, or the device bind in the volume's block directory."""
        here = await self._look_at(staging, "staging_target_path", own)
        if block and here.holds is Holds.BLOCK_STAGE and (await look(own.device_file, own)).holds is Holds.DEVICE:
            return own.device_file
        if block and here.holds is Holds.NOTHING:
            legacy = await self._legacy_device_bind(staging, own)
            if legacy is not None:
                return legacy
        if not block and here.holds is Holds.FILESYSTEM:
            return staging
        if here.holds is Holds.OTHER:
            raise PreconditionFailed(f"staging path {staging} holds {here.what}, not volume {own.volume_id}")
        kind = "block" if block else "filesystem"
        raise PreconditionFailed(f"volume {own.volume_id} is not staged at {staging} as a {kind} volume "
                                 f"({here.words} there)")

    async def unpublish(self, volume_id: str, target: str) -> None:
        """Unmount the volume's binds at ``target`` and remove what publish created; nothing of the volume's
        there is success. Whatever is left below the volume's bind stays, and so does a target that is not empty:
        the volume's part always finishes."""
        own, here = await self._at(volume_id, target, "target_path")
        if here.holds in (Holds.OTHER, Holds.BLOCK_STAGE):
            raise PreconditionFailed(f"target path {target} holds {here.words}, not a publish of volume "
                                     f"{volume_id}: left alone")
        if here.holds is Holds.NOTHING:
            return
        left = await self._unmount_while(target, own, here.holds)
        if left.holds is not Holds.NOTHING:
            logger.warning("unpublished volume {} from {}; {} was beneath it and stays", volume_id, target,
                           left.words)
        elif not await mnt.remove_empty(target):
            logger.warning("unpublished volume {} from {}, which is not empty: left in place", volume_id, target)

    # -- stats / expand ----------------------------------------------------------------------------
    async def _published_at(self, volume_id: str, path: str) -> tuple[Own, Sight]:
        """The volume and what is at ``path``; NOT_FOUND when the volume cannot be there (a relative path, one
        outside the kubelet directory or through a link) or is not."""
        await self._require(volume_id)
        own = await self._own(volume_id) if self.policy.admits(path) else Own(volume_id)
        here = await look(path, own) if own.device is not None else Sight(path, Holds.NOTHING, ABSENT)
        if here.state.through_symlink or here.holds is Holds.NOTHING:
            raise NotFound(f"volume {volume_id} is not staged or published at {path[:200]!r}")
        return own, here

    async def stats(self, volume_id: str, path: str) -> VolumeStats:
        """Usage of the volume's filesystem (or its size, for a block bind) at ``path``, and its condition."""
        own, here = await self._published_at(volume_id, path)
        if here.holds not in (Holds.FILESYSTEM, Holds.DEVICE):
            raise NotFound(f"volume {volume_id} is not published at {path} ({here.words} there)")
        usage = await path_usage(path)
        if usage is None or (await look(path, own)).holds is not here.holds:  # unpublished while we looked
            raise NotFound(f"volume {volume_id} is no longer published at {path}")
        return VolumeStats(usage, await self.backend.volume_health(volume_id))

    async def expand(self, volume_id: str, path: str, required_bytes: int, limit_bytes: int) -> int:
        """Grow the backing storage (when asked), show the new size on the device, grow the filesystem mounted
        at ``path`` when it is the volume's own; the device's size."""
        own, here = await self._published_at(volume_id, path)
        if here.holds is Holds.OTHER:
            raise PreconditionFailed(f"volume path {path} holds {here.what}, not volume {volume_id}: nothing grown")
        if required_bytes:
            await self.backend.expand_volume(volume_id, required_bytes, limit_bytes)
        size = await self.backend.refresh_device_size(volume_id)
        if here.holds is Holds.FILESYSTEM and own.device is not None:
            entry = here.entry or mnt.topmost(await mnt.mounts(), path)
            if entry is not None:
                await ensure_filesystem_grown(self.runner, own.device, path, entry.fs_type)
        return size
