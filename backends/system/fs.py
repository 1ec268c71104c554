"""Online growth of a mounted filesystem to the size of its device, and what the kernel knows of its size
and errors (:func:`filesystem_reaches`, :func:`ext4_error_count`).

xfs and ext4 grow by ioctl on the mount point (``XFS_IOC_FSGROWFSDATA``,
``EXT4_IOC_RESIZE_FS``), with ``xfs_growfs``/``resize2fs`` only as a fallback
for a kernel that does not know the ioctl. btrfs grows with
``btrfs filesystem resize max``.

ext4 online resize needs ``CAP_SYS_RESOURCE`` (the kernel reserves it for
changing reserved blocks); without it the kernel answers EPERM and we raise a
:class:`SyscallError` that says so. xfs grow needs only ``CAP_SYS_ADMIN``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import anyio
from loguru import logger

from backends.errors import InvalidArgument
from backends.system import _ioctl
from backends.system.errors import SyscallError
from backends.system.runner import Runner

GROW_TIMEOUT = 300.0

# struct xfs_fsop_geom_v1 (every kernel knows it): 8 x u32, 4 x u64, uuid, 7 x u32, padded to 8.
_XFS_GEOM_V1 = struct.Struct("=8I4Q16s7I4x")
XFS_IOC_FSGEOMETRY_V1 = _ioctl.ior(ord("X"), 100, _XFS_GEOM_V1.size)
# struct xfs_growfs_data: u64 newblocks, u32 imaxpct, padded to 8.
_XFS_GROWFS_DATA = struct.Struct("=QI4x")
XFS_IOC_FSGROWFSDATA = _ioctl.iow(ord("X"), 110, _XFS_GROWFS_DATA.size)
EXT4_IOC_RESIZE_FS = _ioctl.iow(ord("f"), 16, 8)
# <linux/fsmap.h>: struct fsmap (u32 device, u32 flags, u64 physical, owner, offset, length, 3 x u64 reserved);
# struct fsmap_head (u32 iflags, oflags, count, entries, 6 x u64 reserved, struct fsmap keys[2], recs[]).
_FSMAP = struct.Struct("=IIQQQQ3Q")
_FSMAP_HEAD = struct.Struct("=IIII6Q")
FS_IOC_GETFSMAP = _ioctl.iowr(ord("X"), 59, _FSMAP_HEAD.size + 2 * _FSMAP.size)
SYS_FS_EXT4 = "/sys/fs/ext4"

_NOT_SUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS)


class _NoIoctl(Exception):
    """The kernel does not know the ioctl: use the tool instead."""


def _open_dir(mount_point: str) -> int:
    try:
        return os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror("open", mount_point, exc) from exc


def _grow_xfs_sync(device: str, mount_point: str) -> tuple[int, int]:
    """Returns (old, new) data blocks; equal when there was nothing to grow."""
    device_bytes = _ioctl.device_size(device)
    fd = _open_dir(mount_point)
    try:
        try:
            raw = fcntl.ioctl(fd, XFS_IOC_FSGEOMETRY_V1, bytes(_XFS_GEOM_V1.size))
        except OSError as exc:
            if exc.errno in _NOT_SUPPORTED:
                raise _NoIoctl from exc
            raise SyscallError.from_oserror("ioctl XFS_IOC_FSGEOMETRY", mount_point, exc) from exc
        geometry = _XFS_GEOM_V1.unpack(raw)
        block_bytes, imaxpct, data_blocks = geometry[0], geometry[7], geometry[8]
        new_blocks = device_bytes // block_bytes
        if new_blocks <= data_blocks:
            return data_blocks, data_blocks
        try:
            fcntl.ioctl(fd, XFS_IOC_FSGROWFSDATA, _XFS_GROWFS_DATA.pack(new_blocks, imaxpct))
        except OSError as exc:
            if exc.errno in _NOT_SUPPORTED:
                raise _NoIoctl from exc
            raise SyscallError.from_oserror("ioctl XFS_IOC_FSGROWFSDATA", mount_point, exc) from exc
        return data_blocks, new_blocks
    finally:
        os.close(fd)


def ext4_block_count(device: str) -> tuple[int, int]:
    """(blocks, block size) from the ext4 superblock at byte 1024 of ``device``."""
    with open(device, "rb", buffering=0) as dev:
        raw = os.pread(dev.fileno(), 1024, 1024)
    if len(raw) < 0x158 or raw[0x38:0x3A] != b"\x53\xef":
        raise SyscallError("read ext4 superblock", errno.EINVAL, device, "no ext4 superblock found")
    low, log_size = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<I", raw, 24)[0]
    incompat = struct.unpack_from("<I", raw, 0x60)[0]
    high = struct.unpack_from("<I", raw, 0x150)[0] if incompat & 0x80 else 0  # INCOMPAT_64BIT
    return (high << 32) | low, 1024 << log_size


def _grow_ext4_sync(device: str, mount_point: str) -> tuple[int, int]:
    """Returns (old, new) block counts from the superblock; equal when there was nothing to grow."""
    device_bytes = _ioctl.device_size(device)
    blocks, block_bytes = ext4_block_count(device)
    new_blocks = device_bytes // block_bytes
    if new_blocks <= blocks:
        return blocks, blocks
    fd = _open_dir(mount_point)
    try:
        fcntl.ioctl(fd, EXT4_IOC_RESIZE_FS, struct.pack("=Q", new_blocks))
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED:
            raise _NoIoctl from exc
        detail = ""
        if exc.errno == errno.EPERM:
            detail = "ext4 online resize needs CAP_SYS_RESOURCE, which this process lacks"
        raise SyscallError.from_oserror("ioctl EXT4_IOC_RESIZE_FS", mount_point, exc, detail) from exc
    finally:
        os.close(fd)
    return blocks, new_blocks


async def _grow_with_tool(runner: Runner, device: str, mount_point: str, fs_type: str) -> None:
    argv = {
        "xfs": ["xfs_growfs", "-d", mount_point],
        "ext4": ["resize2fs", device],
        "btrfs": ["btrfs", "filesystem", "resize", "max", mount_point],
    }[fs_type]
    await runner.run(argv, timeout=GROW_TIMEOUT)


async def grow_filesystem(runner: Runner, device: str, mount_point: str, fs_type: str) -> bool:
    """Grow the filesystem mounted at ``mount_point`` to fill ``device``.

    Returns True when it grew, False when it already filled the device (btrfs:
    always True, the tool does not say).
    """
    grow = {"xfs": _grow_xfs_sync, "ext4": _grow_ext4_sync}.get(fs_type)
    if grow is None and fs_type != "btrfs":
        raise InvalidArgument(f"cannot grow a {fs_type!r} filesystem (supported: ext4, xfs, btrfs)")
    if grow is not None:
        try:
            old, new = await anyio.to_thread.run_sync(grow, device, mount_point)
        except _NoIoctl:
            logger.info("{fs} grow ioctl unknown to this kernel; using the tool", fs=fs_type)
        else:
            logger.info("{fs} at {mp}: {old} -> {new} blocks", fs=fs_type, mp=mount_point, old=old, new=new)
            return new > old
    await _grow_with_tool(runner, device, mount_point, fs_type)
    logger.info("{fs} at {mp} grown to fill {dev}", fs=fs_type, mp=mount_point, dev=device)
    return True


def _fsmap_device(st_dev: int) -> int:
    """A device number as GETFSMAP keys carry it (the kernel's ``new_encode_dev``)."""
    major, minor = os.major(st_dev), os.minor(st_dev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def filesystem_reaches(mount_point: str, offset: int) -> bool | None:
    """Whether the filesystem mounted at ``mount_point`` extends over byte ``offset`` of its device, as the
    mounted filesystem knows its size now (``FS_IOC_GETFSMAP``: ext4, xfs). None when the filesystem cannot
    say (no GETFSMAP: btrfs, older kernels). Blocking."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        device = _fsmap_device(os.fstat(fd).st_dev)
        low = _FSMAP.pack(device, 0, offset, 0, 0, 0, 0, 0, 0)
        high = _FSMAP.pack(0xFFFFFFFF, 0xFFFFFFFF, *([(1 << 64) - 1] * 4), 0, 0, 0)
        request = bytearray(_FSMAP_HEAD.pack(0, 0, 1, 0, 0, 0, 0, 0, 0, 0) + low + high + bytes(_FSMAP.size))
        try:
            fcntl.ioctl(fd, FS_IOC_GETFSMAP, request)
        except OSError as exc:
            if exc.errno in (*_NOT_SUPPORTED, errno.EINVAL):
                return None
            raise
    finally:
        os.close(fd)
    return int(_FSMAP_HEAD.unpack_from(request, 0)[3]) > 0


def ext4_error_count(device: str) -> int:
    """Errors the mounted ext4 filesystem on ``device`` has recorded (its superblock's count, as sysfs shows
    it under the kernel's name for the device: ``loop3``, ``dm-2``); 0 when it is not a mounted ext4
    filesystem. Blocking."""
    name = os.path.basename(os.path.realpath(device))
    try:
        with open(os.path.join(SYS_FS_EXT4, name, "errors_count")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0
