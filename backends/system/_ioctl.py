"""ioctl request numbers and small blocking helpers shared by the system modules.

Everything here blocks; callers run it in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import struct

from backends.system.errors import SyscallError

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: int, number: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (kind << _IOC_TYPESHIFT) | (number << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def io(kind: int, number: int) -> int:
    return _ioc(_IOC_NONE, kind, number, 0)


def ior(kind: int, number: int, size: int) -> int:
    return _ioc(_IOC_READ, kind, number, size)


def iow(kind: int, number: int, size: int) -> int:
    return _ioc(_IOC_WRITE, kind, number, size)


def iowr(kind: int, number: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, number, size)


# <linux/fs.h>
BLKSSZGET = io(0x12, 104)
BLKPBSZGET = io(0x12, 123)
BLKGETSIZE64 = ior(0x12, 114, 8)


def device_size_fd(fd: int, path: str) -> int:
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, bytes(8))
    except OSError as exc:
        raise SyscallError.from_oserror("ioctl BLKGETSIZE64", path, exc) from exc
    value: int = struct.unpack("=Q", buf)[0]
    return value


def device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return device_size_fd(fd, path)
    finally:
        os.close(fd)


def device_int(path: str, request: int, name: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, request, bytes(4))
    except OSError as exc:
        raise SyscallError.from_oserror(f"ioctl {name}", path, exc) from exc
    finally:
        os.close(fd)
    value: int = struct.unpack("=I", buf)[0]
    return value
