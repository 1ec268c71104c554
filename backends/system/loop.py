"""Loop devices by ioctl, without losetup.

Attach uses ``LOOP_CTL_GET_FREE`` on ``/dev/loop-control`` and one atomic
``LOOP_CONFIGURE`` (Linux ≥ 5.8) on the free device. Every call blocks, so it
runs in a worker thread. ``LO_FLAGS_AUTOCLEAR`` is never set by us: a device
stays attached until :func:`detach`, which is what lets a restarted driver find
its devices again with :func:`list_attached`.

Detach and open holders: the kernel's ``LOOP_CLR_FD`` does not fail when
someone else has the device open; it marks the device autoclear and returns
success, and the real detach happens on the last close. :func:`detach` makes
that visible instead of pretending:

* the device is mounted or otherwise claimed exclusively (a filesystem, a
  device-mapper table): our ``O_EXCL`` open fails with EBUSY, nothing is
  changed and :class:`~backends.errors.VolumeInUse` is raised;
* only plain opens remain (a process reading the device node): the detach is
  *scheduled* (the kernel sets autoclear), and :class:`VolumeInUse` is raised
  because the device is still attached. Calling again is safe; once the last
  holder closes the device disappears and the next call returns quietly.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from loguru import logger

from backends.errors import CapacityExhausted, InvalidArgument, PreconditionFailed, VolumeInUse
from backends.system import _ioctl
from backends.system.errors import SyscallError

LOOP_CONTROL = "/dev/loop-control"
_SYS_BLOCK = Path("/sys/block")

# <linux/loop.h>
LOOP_CLR_FD = 0x4C01
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8
LO_FLAGS_DIRECT_IO = 16

LO_NAME_SIZE = 64
# struct loop_info64: 5 x u64, 4 x u32, file name, crypt name, key, 2 x u64 init.
_LOOP_INFO64 = "QQQQQIIII64s64s32sQQ"
# struct loop_config: u32 fd, u32 block_size, loop_info64, 8 x u64 reserved.
_LOOP_CONFIG = struct.Struct("=II" + _LOOP_INFO64 + "8Q")

#: How often attach retries when another process takes the free device first.
#: Logical block size of the loop device of every new volume image, fixed for its life (and its copies').
#: Left to the kernel it follows the image's direct-I/O alignment, which on xfs becomes the
#: filesystem block size once the image shares extents: a filesystem made with 1 KiB blocks on a
#: 512-byte device would then no longer mount after its first snapshot.
LOGICAL_BLOCK_BYTES = 4096
ATTACH_ATTEMPTS = 16
#: How long a detach waits for a transient opener (a prober) to close before reporting the device in use.
DETACH_GRACE_SECONDS = 2.0

_DEVICE_PATH = re.compile(r"^/dev/loop(\d+)$")


@dataclass(frozen=True)
class LoopDevice:
    path: str
    number: int
    backing_file: str
    offset: int
    sizelimit: int
    readonly: bool
    direct_io: bool
    size_bytes: int
    #: Detach requested while another process still has it open: the kernel drops it at that last close.
    autoclear: bool = False


def loop_number(path: str) -> int:
    """The N of ``/dev/loopN``; anything else is refused."""
    match = _DEVICE_PATH.match(path)
    if match is None:
        raise InvalidArgument(f"{path!r} is not a loop device path (/dev/loopN)")
    return int(match.group(1))


# ---------------------------------------------------------------- sysfs reads


def _read_attr(path: Path) -> str:
    return path.read_text().strip()


def _read_device(number: int) -> LoopDevice | None:
    """The loop device's state from sysfs, or None when it is not attached."""
    block = _SYS_BLOCK / f"loop{number}"
    attrs = block / "loop"
    try:
        backing = _read_attr(attrs / "backing_file")
        offset = int(_read_attr(attrs / "offset"))
        sizelimit = int(_read_attr(attrs / "sizelimit"))
        dio = _read_attr(attrs / "dio") == "1"
        readonly = _read_attr(block / "ro") == "1"
        sectors = int(_read_attr(block / "size"))
        autoclear = _read_attr(attrs / "autoclear") == "1"
    except (FileNotFoundError, ProcessLookupError, OSError):
        return None
    if not backing:
        return None
    return LoopDevice(
        path=f"/dev/loop{number}",
        number=number,
        backing_file=backing,
        offset=offset,
        sizelimit=sizelimit,
        readonly=readonly,
        direct_io=dio,
        size_bytes=sectors * 512,
        autoclear=autoclear,
    )


def _list_attached_sync() -> list[LoopDevice]:
    devices: list[LoopDevice] = []
    for entry in _SYS_BLOCK.glob("loop*"):
        suffix = entry.name.removeprefix("loop")
        if not suffix.isdigit():
            continue
        device = _read_device(int(suffix))
        if device is not None:
            devices.append(device)
    devices.sort(key=lambda d: d.number)
    return devices


# ----------------------------------------------------------------- attaching


def _pack_config(file_fd: int, backing_file: str, *, flags: int, offset: int, sizelimit: int, block_size: int) -> bytes:
    name = os.fsencode(backing_file)[: LO_NAME_SIZE - 1]
    return _LOOP_CONFIG.pack(
        file_fd,
        block_size,
        0, 0, 0,  # lo_device, lo_inode, lo_rdevice: output only
        offset,
        sizelimit,
        0,  # lo_number: output only
        0, 0,  # no encryption
        flags,
        name,
        b"",
        b"",
        0, 0,
        *([0] * 8),
    )  # fmt: skip


def _open_error(backing_file: str, exc: OSError) -> Exception:
    if exc.errno == errno.ENOENT:  # the data the volume is made of is gone: a cause, not an internal error
        return PreconditionFailed(f"{backing_file} does not exist: there is nothing to attach")
    return SyscallError.from_oserror("open", backing_file, exc)


def _open_backing(backing_file: str, *, readonly: bool, direct_io: bool) -> tuple[int, bool]:
    """Open the image; returns (fd, whether O_DIRECT is in effect)."""
    mode = os.O_RDONLY if readonly else os.O_RDWR
    mode |= os.O_CLOEXEC
    if direct_io:
        try:
            return os.open(backing_file, mode | os.O_DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise _open_error(backing_file, exc) from exc
            logger.warning("{file}: its filesystem refuses O_DIRECT; attaching with buffered I/O", file=backing_file)
    try:
        return os.open(backing_file, mode), False
    except OSError as exc:
        raise _open_error(backing_file, exc) from exc


def _get_free() -> int:
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror("open", LOOP_CONTROL, exc) from exc
    try:
        return fcntl.ioctl(control, LOOP_CTL_GET_FREE)
    except OSError as exc:
        # GET_FREE takes no argument, so EINVAL means what ENOSPC does: no new device can be made. Kernel 6.1
        # answers EINVAL once every loop minor is in use (seen in the kernel lane with max_part=255).
        if exc.errno in (errno.ENOSPC, errno.EINVAL):
            raise CapacityExhausted("the kernel has no free loop device (every loop device is in use)") from exc
        raise SyscallError.from_oserror("ioctl LOOP_CTL_GET_FREE", LOOP_CONTROL, exc) from exc
    finally:
        os.close(control)


def _configure(device_path: str, config: bytes, *, readonly: bool) -> int | None:
    """Bind the device; returns its size, or None when another process won the race."""
    try:
        device_fd = os.open(device_path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENXIO):  # removed after GET_FREE
            return None
        raise SyscallError.from_oserror("open", device_path, exc) from exc
    try:
        fcntl.ioctl(device_fd, LOOP_CONFIGURE, config)
        return _ioctl.device_size_fd(device_fd, device_path)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return None
        raise
    finally:
        os.close(device_fd)


def _attach_sync(
    backing_file: str, *, readonly: bool, direct_io: bool, offset: int, sizelimit: int, block_size: int
) -> LoopDevice:
    file_fd, use_dio = _open_backing(backing_file, readonly=readonly, direct_io=direct_io)
    try:
        for _ in range(ATTACH_ATTEMPTS):
            number = _get_free()
            device_path = f"/dev/loop{number}"
            flags = (LO_FLAGS_READ_ONLY if readonly else 0) | (LO_FLAGS_DIRECT_IO if use_dio else 0)
            config = _pack_config(
                file_fd, backing_file, flags=flags, offset=offset, sizelimit=sizelimit, block_size=block_size
            )
            try:
                size = _configure(device_path, config, readonly=readonly)
            except OSError as exc:
                if not (use_dio and exc.errno == errno.EINVAL):
                    raise SyscallError.from_oserror("ioctl LOOP_CONFIGURE", device_path, exc) from exc
                logger.warning(
                    "{dev}: kernel refused direct I/O for {file} ({err}); retrying with buffered I/O",
                    dev=device_path,
                    file=backing_file,
                    err=os.strerror(exc.errno or 0),
                )
                use_dio = False
                continue
            if size is None:
                continue
            device = _read_device(number)
            if device is None:  # pragma: no cover - detached by someone else already
                raise SyscallError("read sysfs", errno.ENXIO, device_path, "attached device vanished")
            if direct_io and not device.direct_io:
                logger.warning("{dev}: direct I/O not in effect for {file}", dev=device_path, file=backing_file)
            return device
        detail = f"lost the race for a free device {ATTACH_ATTEMPTS} times"
        raise SyscallError("ioctl LOOP_CONFIGURE", errno.EBUSY, backing_file, detail)
    finally:
        os.close(file_fd)


async def attach(
    backing_file: str,
    *,
    readonly: bool = False,
    direct_io: bool = True,
    offset: int = 0,
    sizelimit: int = 0,
    block_size: int = 0,
) -> LoopDevice:
    """Attach ``backing_file`` to a free loop device; falls back to buffered I/O when
    direct I/O is impossible (and says so at WARNING)."""
    if offset < 0 or sizelimit < 0 or block_size < 0:
        raise InvalidArgument("offset, sizelimit and block_size must not be negative")
    device = await anyio.to_thread.run_sync(
        lambda: _attach_sync(
            backing_file,
            readonly=readonly,
            direct_io=direct_io,
            offset=offset,
            sizelimit=sizelimit,
            block_size=block_size,
        )
    )
    logger.debug(
        "attached {file} as {dev} (dio={dio}, ro={ro})",
        file=backing_file,
        dev=device.path,
        dio=device.direct_io,
        ro=device.readonly,
    )
    return device


# ----------------------------------------------------------------- detaching


def _detach_sync(path: str) -> None:
    number = loop_number(path)
    current = _read_device(number)
    backing = current.backing_file if current is not None else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENXIO):
            return
        if exc.errno == errno.EBUSY:
            raise VolumeInUse(f"{path} is mounted or claimed by another device; not detached") from exc
        raise SyscallError.from_oserror("open", path, exc) from exc
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # not attached
            return
        if exc.errno == errno.EBUSY:
            raise VolumeInUse(f"{path} is busy; not detached") from exc
        raise SyscallError.from_oserror("ioctl LOOP_CLR_FD", path, exc) from exc
    finally:
        os.close(fd)
    if _detach_pending(number, backing):
        raise VolumeInUse(f"{path} is still open by another process; the kernel will detach it on the last close")


def _detach_pending(number: int, backing: str) -> bool:
    """Whether the detach is still waiting for another opener, after a short grace.

    Probers (``blkid``, ``lsblk``, udev) open every block device for a moment; the
    kernel then finishes the detach at their close. Only a holder that stays longer
    than :data:`DETACH_GRACE_SECONDS` is reported. A device that came back bound to
    another file was detached and taken by someone else.
    """
    deadline = time.monotonic() + DETACH_GRACE_SECONDS
    while True:
        still = _read_device(number)
        if still is None or still.backing_file != backing:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


async def detach(path: str) -> None:
    """Detach a loop device. Not attached (or no such device) is success."""
    await anyio.to_thread.run_sync(_detach_sync, path)
    logger.debug("detached {dev}", dev=path)


# ----------------------------------------------------------------- queries


async def list_attached() -> list[LoopDevice]:
    """Every attached loop device, from sysfs (one pass; meant for start-up)."""
    return await anyio.to_thread.run_sync(_list_attached_sync)


async def get_device(path: str) -> LoopDevice | None:
    """One loop device's state, or None when it is not attached."""
    number = loop_number(path)
    return await anyio.to_thread.run_sync(_read_device, number)


async def find_by_backing_file(path: str) -> LoopDevice | None:
    """The lowest-numbered loop device backed by ``path`` (compared after resolving symlinks)."""
    wanted = await anyio.Path(path).resolve()
    for device in await list_attached():
        if device.backing_file == str(wanted) or device.backing_file == path:
            return device
    return None


def _refresh_sync(path: str) -> int:
    loop_number(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror("open", path, exc) from exc
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY)
        return _ioctl.device_size_fd(fd, path)
    except OSError as exc:
        raise SyscallError.from_oserror("ioctl LOOP_SET_CAPACITY", path, exc) from exc
    finally:
        os.close(fd)


async def refresh_capacity(path: str) -> int:
    """Re-read the backing file's size (after it grew); returns the new device size."""
    size = await anyio.to_thread.run_sync(_refresh_sync, path)
    logger.debug("{dev}: capacity refreshed to {size} bytes", dev=path, size=size)
    return size
