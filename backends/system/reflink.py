"""Copying image files cheaply, and freezing a filesystem for the instant of a copy.

* :func:`copy_image` makes ``dst`` a copy of ``src``: a copy-on-write clone
  (``FICLONE``) where the filesystem shares extents (xfs with reflink, btrfs),
  otherwise a sparse-aware copy that walks the data segments with
  ``SEEK_DATA``/``SEEK_HOLE`` and moves each one with ``copy_file_range``
  (read/write where the kernel refuses), so holes stay holes.
* :func:`frozen` holds a mounted filesystem frozen (``FIFREEZE``) while the
  body runs and always thaws it (``FITHAW``), also on error or cancellation.
* :func:`shared_bytes` tells how much of a file still shares its extents with
  another (``FIEMAP``): what overwriting all of it would cost in new blocks.

The ioctls block; the async wrappers run them in worker threads that are
never abandoned, so a cancelled caller still waits for a copy to finish
before the filesystem is thawed.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from loguru import logger

from backends.errors import Busy, CapacityExhausted
from backends.system import _ioctl
from backends.system.errors import SyscallError

# <linux/fs.h>: _IOW(0x94, 9, int), _IOW(0x94, 13, struct file_clone_range),
# _IOWR('X', 119, int), _IOWR('X', 120, int).
FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
# struct file_clone_range: s64 src_fd, u64 src_offset, u64 src_length, u64 dest_offset.
_CLONE_RANGE = struct.Struct("=qQQQ")

#: errnos meaning "this filesystem (or this pair of files) cannot share extents".
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM})
#: errnos meaning copy_file_range is not possible here: fall back to read/write.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP})
CHUNK_BYTES = 8 << 20

# <linux/fiemap.h>: struct fiemap (u64 start, u64 length, u32 flags, u32 mapped, u32 count, u32 reserved)
# followed by struct fiemap_extent (u64 logical, physical, length, 2 x u64 reserved, u32 flags, 3 x u32).
_FIEMAP = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
FS_IOC_FIEMAP = _ioctl.iowr(ord("f"), 11, _FIEMAP.size)
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
#: Extents asked for per FIEMAP call.
_FIEMAP_BATCH = 512


@dataclass(frozen=True)
class CopyResult:
    method: CopyMethod
    size_bytes: int
    #: Bytes of data moved (0 for a clone: nothing was read).
    copied_bytes: int


class CopyMethod(enum.Enum):
    REFLINK = "reflink"
    SPARSE = "sparse"


# ------------------------------------------------------------------ cloning
def clone_file(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` share all of ``src_fd``'s extents. False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


def clone_range(src_fd: int, dst_fd: int, src_offset: int, length: int, dst_offset: int) -> bool:
    """Share ``length`` bytes (0: to the end) of ``src_fd`` at ``dst_offset``. False where unsupported.

    Offsets and length must be multiples of the filesystem block size, except a
    range that ends at the source's end of file.
    """
    try:
        fcntl.ioctl(dst_fd, FICLONERANGE, _CLONE_RANGE.pack(src_fd, src_offset, length, dst_offset))
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


# ------------------------------------------------------------------ sparse copy
def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of every data segment of ``fd`` below ``size``, in order."""
    segments = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to end of file
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        segments.append((start, end - start))
        offset = end
    return segments


def _copy_range_rw(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        data = os.pread(src_fd, min(CHUNK_BYTES, length - done), offset + done)
        if not data:
            return
        written = 0
        while written < len(data):
            written += os.pwrite(dst_fd, data[written:], offset + done + written)
        done += len(data)


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            moved = os.copy_file_range(src_fd, dst_fd, min(CHUNK_BYTES, length - done), offset + done,
                                       offset + done)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            _copy_range_rw(src_fd, dst_fd, offset + done, length - done)
            return
        if moved == 0:  # the source shrank under us: the rest reads as zeros
            return
        done += moved


def sparse_copy(src_fd: int, dst_fd: int, size: int) -> int:
    """Copy the first ``size`` bytes, data segments only; ``dst`` ends up ``size`` long. Returns bytes moved."""
    os.ftruncate(dst_fd, size)
    moved = 0
    for offset, length in data_segments(src_fd, size):
        _copy_range(src_fd, dst_fd, offset, length)
        moved += length
    return moved


# ------------------------------------------------------------------ whole images
def copy_image_sync(src: str, dst: str, *, allow_reflink: bool = True) -> CopyResult:
    """Create ``dst`` (which must not exist) as a copy of ``src``; fsync it. Blocking.

    On failure ``dst`` is removed. ENOSPC becomes :class:`CapacityExhausted`.
    """
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src_fd).st_size
        dst_fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            result = _fill(src_fd, dst_fd, size, allow_reflink)
            os.fsync(dst_fd)
        except BaseException as exc:
            os.close(dst_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise CapacityExhausted(f"no room to copy {src} ({size} bytes) to {dst}") from exc
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)
    return result


def _fill(src_fd: int, dst_fd: int, size: int, allow_reflink: bool) -> CopyResult:
    if allow_reflink and clone_file(src_fd, dst_fd):
        return CopyResult(CopyMethod.REFLINK, size, 0)
    return CopyResult(CopyMethod.SPARSE, size, sparse_copy(src_fd, dst_fd, size))


async def copy_image(src: str, dst: str, *, allow_reflink: bool = True) -> CopyResult:
    """:func:`copy_image_sync` in a worker thread that a cancelled caller still waits for."""
    return await anyio.to_thread.run_sync(lambda: copy_image_sync(src, dst, allow_reflink=allow_reflink))


def supports_reflink_sync(directory: str) -> bool:
    """Whether files in ``directory`` can share extents. Blocking.

    Probes by cloning one empty unnamed file (``O_TMPFILE``) into another: that needs no data block and no
    directory entry, so it answers on a full filesystem too (where a driver must still start, to delete).
    A filesystem without ``O_TMPFILE`` is probed with two named scratch files of one block instead.
    """
    try:
        fds = [os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600) for _ in range(2)]
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        return _supports_reflink_named(directory)
    try:
        return clone_file(fds[0], fds[1])
    finally:
        for fd in fds:
            os.close(fd)


def _supports_reflink_named(directory: str) -> bool:
    src = os.path.join(directory, f".reflink-probe-{os.getpid()}-a")
    dst = os.path.join(directory, f".reflink-probe-{os.getpid()}-b")
    fds: list[int] = []
    try:
        fds.append(os.open(src, os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, 0o600))
        os.pwrite(fds[0], b"\0" * 4096, 0)
        fds.append(os.open(dst, os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, 0o600))
        return clone_file(fds[0], fds[1])
    finally:
        for fd in fds:
            os.close(fd)
        for path in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def shared_bytes_sync(path: str) -> int:
    """Bytes of ``path`` whose extents another file shares (0 where nothing is shared, or FIEMAP is not
    supported). Blocking: one FIEMAP call per 512 extents."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        return _shared_bytes(fd)
    finally:
        os.close(fd)


def _shared_bytes(fd: int) -> int:
    shared, start = 0, 0
    buffer = bytearray(_FIEMAP.size + _FIEMAP_EXTENT.size * _FIEMAP_BATCH)
    while True:
        _FIEMAP.pack_into(buffer, 0, start, (1 << 64) - 1 - start, 0, 0, _FIEMAP_BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buffer)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                return 0
            raise
        mapped = _FIEMAP.unpack_from(buffer, 0)[3]
        if not mapped:
            return shared
        for index in range(mapped):
            logical, _, length, _, _, flags, _, _, _ = _FIEMAP_EXTENT.unpack_from(
                buffer, _FIEMAP.size + index * _FIEMAP_EXTENT.size)
            if flags & FIEMAP_EXTENT_SHARED:
                shared += length
            if flags & FIEMAP_EXTENT_LAST:
                return shared
            start = logical + length


# ------------------------------------------------------------------ freeze / thaw
def _open_mount(mount_point: str, expected_dev: int) -> int:
    """Open a mount point's root directory, checking it is the filesystem on ``expected_dev``."""
    try:
        fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror("open", mount_point, exc) from exc
    if expected_dev and os.fstat(fd).st_dev != expected_dev:
        os.close(fd)
        raise SyscallError("open", errno.EXDEV, mount_point, "the mount no longer shows the expected device")
    return fd


def freeze_sync(mount_point: str, expected_dev: int = 0) -> None:
    """FIFREEZE the filesystem mounted at ``mount_point``; already frozen by someone else is :class:`Busy`."""
    fd = _open_mount(mount_point, expected_dev)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise Busy(f"the filesystem at {mount_point} is already frozen by someone else") from exc
        raise SyscallError.from_oserror("ioctl FIFREEZE", mount_point, exc) from exc
    finally:
        os.close(fd)


def thaw_sync(mount_point: str) -> bool:
    """FITHAW the filesystem at ``mount_point``. False when it was not frozen."""
    fd = _open_mount(mount_point, 0)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise SyscallError.from_oserror("ioctl FITHAW", mount_point, exc) from exc
    finally:
        os.close(fd)
    return True


async def thaw(mount_point: str) -> bool:
    return await anyio.to_thread.run_sync(thaw_sync, mount_point)


@contextlib.asynccontextmanager
async def frozen(mount_point: str, expected_dev: int = 0) -> AsyncIterator[None]:
    """Hold the filesystem at ``mount_point`` frozen for the body; thaw it whatever happens."""
    await anyio.to_thread.run_sync(freeze_sync, mount_point, expected_dev)
    logger.debug("froze {}", mount_point)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await thaw(mount_point)
            logger.debug("thawed {}", mount_point)
