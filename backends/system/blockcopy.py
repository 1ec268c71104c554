"""Copying a byte range of a disk block for block: onto another disk, or into a sparse image file.

:func:`copy_sync` moves ``length`` bytes from a source range (a block device
at an offset, or an image file) to a target range:

* reads and writes use large page-aligned buffers with ``O_DIRECT`` where the
  kernel allows it, so neither side's page cache holds stale or useless data;
* the source is inspected in :data:`BLOCK_BYTES` blocks; runs of zeros are
  never written. On an image target they stay holes (the image is sparse and
  costs only the data); on a device target they are zeroed with
  ``BLKZEROOUT``, which the device does cheaply where it can (thin and loop
  devices punch holes, SSDs unmap) and the kernel writes out where it cannot,
  so the target is exactly the source whatever it held before;
* an image source is read only where it has data (``SEEK_DATA``/``SEEK_HOLE``);
* the target is fsynced before the copy counts as done; a ``stop`` event set
  by the caller ends the copy between chunks (:class:`CopyStopped`).

Device targets are opened with ``O_EXCL``: the kernel refuses while the disk
is mounted or held, a last guard against writing under someone's feet.
ENOSPC/EDQUOT on an image target becomes :class:`CapacityExhausted`.

:func:`copy` runs it in a thread the caller's cancellation stops and waits for.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import anyio

from backends.errors import CapacityExhausted
from backends.system import _ioctl
from backends.system.errors import SyscallError

#: Granularity of zero detection (and so of an image's holes).
BLOCK_BYTES = 64 << 10
#: Bytes per read.
CHUNK_BYTES = 8 << 20
BLKZEROOUT = _ioctl.io(0x12, 127)
BLKFLSBUF = _ioctl.io(0x12, 97)
_NO_ZEROOUT = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS})
_ZERO_BLOCK = bytes(BLOCK_BYTES)
T = TypeVar("T")


class CopyStopped(Exception):
    """The caller asked the copy to stop; the target holds a partial copy."""


@dataclass(frozen=True)
class Range:
    """``length`` bytes at ``offset`` of a block device or an image file."""

    path: str
    offset: int
    length: int
    kind: Kind


class Kind(enum.Enum):
    DEVICE = "device"
    IMAGE = "image"


@dataclass(frozen=True)
class CopyStats:
    bytes_total: int
    #: Bytes written as data (the rest was zero: a hole, or zeroed on the device).
    bytes_data: int
    seconds: float

    @property
    def mib_per_second(self) -> float:
        return self.bytes_total / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------ opening
def _open(path: str, flags: int) -> tuple[int, bool]:
    """Open with O_DIRECT where the kernel allows it. Returns (fd, direct)."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC, 0o600), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise SyscallError.from_oserror("open", path, exc) from exc
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o600), False
    except OSError as exc:
        raise SyscallError.from_oserror("open", path, exc) from exc


def _open_target(target: Range) -> int:
    if target.kind is Kind.DEVICE:
        try:
            fd, _ = _open(target.path, os.O_RDWR | os.O_EXCL)
        except SyscallError as exc:
            if exc.errno == errno.EBUSY:
                raise SyscallError("open", errno.EBUSY, target.path, "the disk is in use (mounted or held)") from exc
            raise
        return fd
    # Created without O_DIRECT: where a filesystem refuses it (tmpfs before Linux 6.6) open() fails only after
    # creating the file. Direct I/O is switched on afterwards where it is available.
    try:
        fd = os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SyscallError.from_oserror("open", target.path, exc) from exc
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    try:
        os.ftruncate(fd, target.offset + target.length)
    except OSError as exc:
        os.close(fd)
        os.unlink(target.path)
        raise SyscallError.from_oserror("ftruncate", target.path, exc) from exc
    return fd


# ------------------------------------------------------------------ planning
def data_runs(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """(offset, length) relative to ``offset`` of the parts of a file that may hold data, block-aligned.

    A device (or a file system without SEEK_DATA) is one run: all of it is read.
    """
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return [(0, length)]
    runs: list[tuple[int, int]] = []
    position = offset
    end = offset + length
    while position < end:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            if exc.errno == errno.EINVAL:
                return [(0, length)]
            raise
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        first = (start - offset) // BLOCK_BYTES * BLOCK_BYTES
        last = min(length, -(-(stop - offset) // BLOCK_BYTES) * BLOCK_BYTES)
        if runs and first <= runs[-1][0] + runs[-1][1]:
            first = runs[-1][0]
            runs.pop()
        runs.append((first, last - first))
        position = stop
    return runs


def split_zero_blocks(data: bytes | memoryview, block: int = BLOCK_BYTES) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_zero) of the maximal runs of zero and non-zero ``block``-sized pieces of ``data``."""
    view = memoryview(data)
    run_start = 0
    run_zero: bool | None = None
    for start in range(0, len(view), block):
        piece = view[start:start + block].tobytes()
        zero = piece == _ZERO_BLOCK[:len(piece)]
        if run_zero is None:
            run_zero = zero
        elif zero != run_zero:
            yield run_start, start - run_start, run_zero
            run_start, run_zero = start, zero
    if run_zero is not None:
        yield run_start, len(view) - run_start, run_zero


# ------------------------------------------------------------------ writing
class _Writer:
    """Writes runs to the target; on a device, zero runs are gathered and zeroed out in one ioctl."""

    def __init__(self, fd: int, target: Range) -> None:
        self.fd = fd
        self.target = target
        self.data_bytes = 0
        self._zero_start = -1
        self._zero_end = -1

    def data(self, offset: int, view: memoryview) -> None:
        self._flush_zeros()
        done = 0
        while done < len(view):
            written = os.pwritev(self.fd, [view[done:]], self.target.offset + offset + done)
            if written <= 0:
                raise SyscallError("pwrite", errno.EIO, self.target.path, f"short write at {offset + done}")
            done += written
        self.data_bytes += len(view)

    def zeros(self, offset: int, length: int) -> None:
        if self.target.kind is Kind.IMAGE:
            return  # the image was truncated to size: never-written ranges are holes that read as zeros
        if self._zero_end == offset:
            self._zero_end += length
            return
        self._flush_zeros()
        self._zero_start, self._zero_end = offset, offset + length

    def _flush_zeros(self) -> None:
        if self._zero_start < 0:
            return
        start, length = self.target.offset + self._zero_start, self._zero_end - self._zero_start
        self._zero_start = self._zero_end = -1
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("=QQ", start, length))
        except OSError as exc:
            if exc.errno not in _NO_ZEROOUT:
                raise
            self._write_zeros(start, length)

    def _write_zeros(self, start: int, length: int) -> None:
        buf = mmap.mmap(-1, min(CHUNK_BYTES, length))
        try:
            done = 0
            while done < length:
                size = min(len(buf), length - done)
                os.pwritev(self.fd, [memoryview(buf)[:size]], start + done)
                done += size
        finally:
            buf.close()

    def finish(self) -> None:
        self._flush_zeros()
        os.fsync(self.fd)
        if self.target.kind is Kind.DEVICE:
            with contextlib.suppress(OSError):  # only a cache drop; the data is already on the device
                fcntl.ioctl(self.fd, BLKFLSBUF)


# ------------------------------------------------------------------ the copy
def copy_sync(source: Range, target: Range, stop: threading.Event | None = None) -> CopyStats:
    """Copy ``source`` onto ``target`` (same length). Blocking: run it in a worker thread.

    An image target must not exist yet; on any failure it is removed. A device
    target is left as far as the copy got: the caller owns its cleanup.
    """
    if source.length != target.length:
        raise ValueError(f"source ({source.length} bytes) and target ({target.length} bytes) differ in length")
    started = time.monotonic()
    src_fd, _ = _open(source.path, os.O_RDONLY)
    try:
        dst_fd = _open_target(target)
        try:
            data = _copy_fds(src_fd, dst_fd, source, target, stop)
        except BaseException as exc:
            os.close(dst_fd)
            dst_fd = -1
            if target.kind is Kind.IMAGE:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target.path)
            _raise_classified(exc, source, target)
            raise
        finally:
            if dst_fd >= 0:
                os.close(dst_fd)
    finally:
        os.close(src_fd)
    return CopyStats(source.length, data, time.monotonic() - started)


def _raise_classified(exc: BaseException, source: Range, target: Range) -> None:
    if isinstance(exc, OSError) and not isinstance(exc, SyscallError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and target.kind is Kind.IMAGE:
            raise CapacityExhausted(
                f"no room for a copy of {source.length} bytes in {os.path.dirname(target.path)}: "
                f"{exc.strerror}") from exc
        raise SyscallError.from_oserror("copy", f"{source.path} -> {target.path}", exc) from exc


def _copy_fds(src_fd: int, dst_fd: int, source: Range, target: Range, stop: threading.Event | None) -> int:
    writer = _Writer(dst_fd, target)
    buf = mmap.mmap(-1, CHUNK_BYTES)
    view = memoryview(buf)
    try:
        position = 0
        for run_offset, run_length in data_runs(src_fd, source.offset, source.length):
            if run_offset > position:
                writer.zeros(position, run_offset - position)
            for chunk in range(run_offset, run_offset + run_length, CHUNK_BYTES):
                if stop is not None and stop.is_set():
                    raise CopyStopped(f"copy of {source.path} stopped at byte {chunk}")
                size = min(CHUNK_BYTES, run_offset + run_length - chunk)
                got = os.preadv(src_fd, [view[:size]], source.offset + chunk)
                if got < size:  # beyond the end of an image that is shorter than its record says: zeros
                    buf[got:size] = bytes(size - got)
                for offset, length, zero in split_zero_blocks(view[:size]):
                    if zero:
                        writer.zeros(chunk + offset, length)
                    else:
                        writer.data(chunk + offset, view[offset:offset + length])
            position = run_offset + run_length
        if position < source.length:
            writer.zeros(position, source.length - position)
        writer.finish()
    finally:
        # A traceback may still hold slices of the buffer; then the garbage collector unmaps it later.
        with contextlib.suppress(BufferError):
            view.release()
            buf.close()
    return writer.data_bytes


def drop_cache(device: str) -> None:
    """Drop a block device's page cache (BLKFLSBUF), e.g. a partition of a disk written through the whole disk."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKFLSBUF)
    except OSError as exc:
        raise SyscallError.from_oserror("ioctl BLKFLSBUF", device, exc) from exc
    finally:
        os.close(fd)


async def copy(source: Range, target: Range) -> CopyStats:
    """:func:`copy_sync` in its own thread; cancelling the caller stops the copy between chunks and waits for it."""
    return await run_stoppable(lambda stop: copy_sync(source, target, stop))


async def run_stoppable(work: Callable[[threading.Event], T]) -> T:
    """Run ``work(stop)`` in a thread; on cancellation set ``stop``, wait for the thread to end, re-raise."""
    stop = threading.Event()
    finished = threading.Event()
    outcome: list[tuple[bool, object]] = []

    def body() -> None:
        try:
            outcome.append((True, work(stop)))
        except BaseException as exc:  # handed to the awaiting task below
            outcome.append((False, exc))
        finally:
            finished.set()

    threading.Thread(target=body, name="localcsi-blockcopy", daemon=True).start()
    try:
        await anyio.to_thread.run_sync(finished.wait, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        stop.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finished.wait)
        raise
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]
