"""GUID partition tables, written and read by us (no sgdisk, no parted).

Only what the rawdisk backend needs: a disk with a protective MBR, a primary
and a backup GPT header, and *one* partition covering the disk from the first
MiB to the last whole MiB before the backup table. :func:`build` makes the
bytes, :func:`parse_primary` reads them back, and the blocking helpers at the
bottom read and write a device with ``O_DIRECT`` (so what we read is the
device's truth, not a page cache that a loop view bypassed).

Layout, in logical sectors of ``sector`` bytes (512 or 4096)::

    LBA 0                 protective MBR (one 0xEE entry)
    LBA 1                 primary header
    LBA 2 ..              128 entries x 128 bytes (16 KiB)
    1 MiB .. last MiB     partition 1 (aligned to 1 MiB at both ends)
    last - entries ..     backup entries
    last LBA              backup header

All integers are little-endian; GUIDs use the mixed-endian on-disk form
(``uuid.UUID.bytes_le``); every header and the entry array carry a CRC32.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from backends.system import _ioctl
from backends.system.errors import SyscallError

MIB = 1 << 20
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
ENTRY_COUNT = 128
ENTRY_SIZE = 128
ENTRIES_BYTES = ENTRY_COUNT * ENTRY_SIZE
NAME_CHARS = 36
#: Where partition 1 starts and the granularity its end is rounded down to.
ALIGNMENT = MIB

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_ENTRY = struct.Struct("<B3sB3sII")

# <linux/fs.h>
BLKRRPART = _ioctl.io(0x12, 95)
BLKFLSBUF = _ioctl.io(0x12, 97)
BLKDISCARD = _ioctl.io(0x12, 119)


class GptError(ValueError):
    """The bytes are not a GPT we can use."""


@dataclass(frozen=True)
class Partition:
    number: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int
    name: str


@dataclass(frozen=True)
class Table:
    """A parsed (primary) GPT and its non-empty partitions."""

    sector: int
    disk_guid: uuid.UUID
    first_usable_lba: int
    last_usable_lba: int
    alternate_lba: int
    partitions: tuple[Partition, ...]

    def byte_range(self, partition: Partition) -> tuple[int, int]:
        """(offset, size) of a partition in bytes."""
        return partition.first_lba * self.sector, (partition.last_lba - partition.first_lba + 1) * self.sector


@dataclass(frozen=True)
class Layout:
    """Where things go on a disk of ``disk_bytes`` bytes with ``sector``-byte sectors."""

    disk_bytes: int
    sector: int

    @property
    def last_lba(self) -> int:
        return self.disk_bytes // self.sector - 1

    @property
    def entry_sectors(self) -> int:
        return -(-ENTRIES_BYTES // self.sector)

    @property
    def first_usable_lba(self) -> int:
        return 2 + self.entry_sectors

    @property
    def last_usable_lba(self) -> int:
        return self.last_lba - 1 - self.entry_sectors

    @property
    def partition_offset(self) -> int:
        return ALIGNMENT

    @property
    def partition_bytes(self) -> int:
        """Size of the one partition (0 when the disk is too small for any)."""
        end = (self.last_usable_lba + 1) * self.sector
        end -= end % ALIGNMENT
        return max(0, end - self.partition_offset)

    @property
    def head_bytes(self) -> int:
        """Bytes from LBA 0 through the primary entries."""
        return self.first_usable_lba * self.sector

    @property
    def tail_offset(self) -> int:
        """Byte offset of the backup entries (the backup header follows them)."""
        return (self.last_lba - self.entry_sectors) * self.sector


@dataclass(frozen=True)
class Image:
    """What :func:`build` produces: bytes for the start and for the end of the disk."""

    head: bytes
    tail: bytes
    tail_offset: int


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _protective_mbr(layout: Layout) -> bytes:
    mbr = bytearray(layout.sector)
    size = min(layout.last_lba, 0xFFFFFFFF)
    mbr[446:462] = _MBR_ENTRY.pack(0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _entry(partition: Partition) -> bytes:
    name = partition.name.encode("utf-16-le")
    if len(name) > 72:
        raise GptError(f"partition name {partition.name!r} is longer than {NAME_CHARS} characters")
    return _ENTRY.pack(
        partition.type_guid.bytes_le, partition.unique_guid.bytes_le, partition.first_lba, partition.last_lba,
        partition.attributes, name.ljust(72, b"\0"),
    )


def _header(layout: Layout, *, primary: bool, disk_guid: uuid.UUID, entries_crc: int) -> bytes:
    my_lba, alternate = (1, layout.last_lba) if primary else (layout.last_lba, 1)
    entries_lba = 2 if primary else layout.last_lba - layout.entry_sectors
    fields = [
        SIGNATURE, REVISION, HEADER_SIZE, 0, 0, my_lba, alternate, layout.first_usable_lba,
        layout.last_usable_lba, disk_guid.bytes_le, entries_lba, ENTRY_COUNT, ENTRY_SIZE, entries_crc,
    ]
    raw = _HEADER.pack(*fields)
    fields[3] = _crc(raw)
    return _HEADER.pack(*fields).ljust(layout.sector, b"\0")


def build(layout: Layout, *, type_guid: uuid.UUID, name: str, disk_guid: uuid.UUID | None = None,
          unique_guid: uuid.UUID | None = None, attributes: int = 0) -> Image:
    """A GPT with one partition spanning ``layout``'s aligned usable range."""
    if layout.partition_bytes <= 0:
        raise GptError(f"a disk of {layout.disk_bytes} bytes is too small for an aligned partition")
    first = layout.partition_offset // layout.sector
    partition = Partition(1, type_guid, unique_guid or uuid.uuid4(), first,
                          first + layout.partition_bytes // layout.sector - 1, attributes, name)
    entries = _entry(partition).ljust(ENTRIES_BYTES, b"\0").ljust(layout.entry_sectors * layout.sector, b"\0")
    entries_crc = _crc(entries[:ENTRIES_BYTES])
    guid = disk_guid or uuid.uuid4()
    head = _protective_mbr(layout) + _header(layout, primary=True, disk_guid=guid, entries_crc=entries_crc) + entries
    tail = entries + _header(layout, primary=False, disk_guid=guid, entries_crc=entries_crc)
    return Image(head=head, tail=tail, tail_offset=layout.tail_offset)


def has_protective_mbr(sector0: bytes) -> bool:
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return False
    return any(sector0[446 + 16 * i + 4] == 0xEE for i in range(4))


def parse_header(raw: bytes) -> tuple[int, ...] | None:
    """The header's fields when its signature and CRC are right, else None."""
    if len(raw) < HEADER_SIZE or raw[:8] != SIGNATURE:
        return None
    fields = list(_HEADER.unpack(raw[:HEADER_SIZE]))
    size = fields[2]
    if size < HEADER_SIZE or size > len(raw):
        return None
    stored = fields[3]
    check = bytearray(raw[:size])
    check[16:20] = b"\0\0\0\0"
    if _crc(bytes(check)) != stored:
        return None
    return tuple(fields)


def parse_entries(raw: bytes, count: int, size: int) -> tuple[Partition, ...]:
    found = []
    for index in range(count):
        chunk = raw[index * size: index * size + ENTRY_SIZE]
        type_le, unique_le, first, last, attrs, name = _ENTRY.unpack(chunk)
        if type_le == bytes(16):
            continue
        text = name.decode("utf-16-le", "replace").split("\0", 1)[0]
        found.append(Partition(index + 1, uuid.UUID(bytes_le=type_le), uuid.UUID(bytes_le=unique_le), first, last,
                               attrs, text))
    return tuple(found)


#: The start of a disk as read: ``bytes``, or the anonymous mapping it was read into (its slices are ``bytes``).
Head = bytes | mmap.mmap


def parse_primary(head: Head, sector: int) -> Table:
    """Parse the protective MBR, primary header and entries from the start of a disk.

    Raises :class:`GptError` saying what is wrong; the caller decides what a
    broken table means (for us: not ours).
    """
    if len(head) < 2 * sector:
        raise GptError("too few bytes for a GPT")
    if not has_protective_mbr(head[:sector]):
        raise GptError("no protective MBR")
    fields = parse_header(head[sector: 2 * sector])
    if fields is None:
        raise GptError("no valid primary GPT header (signature or CRC)")
    (_, _, _, _, _, my_lba, alternate, first_usable, last_usable, disk_guid, entries_lba, count, size,
     entries_crc) = fields
    if my_lba != 1 or size < ENTRY_SIZE or count * size > 1 << 20:
        raise GptError("implausible GPT header values")
    start, end = entries_lba * sector, entries_lba * sector + count * size
    if end > len(head):
        raise GptError("the partition entries lie beyond the bytes read")
    raw = head[start:end]
    if _crc(raw) != entries_crc:
        raise GptError("partition entry array CRC mismatch")
    return Table(sector, uuid.UUID(bytes_le=bytes(disk_guid)), first_usable, last_usable, alternate,
                 parse_entries(raw, count, size))


# ------------------------------------------------------------ device I/O (blocking)


def _open(path: str, *, write: bool, exclusive: bool = False) -> tuple[int, bool]:
    """Open a block device, with O_DIRECT when the device allows it. Returns (fd, direct)."""
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    try:
        return os.open(path, flags | os.O_DIRECT), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise SyscallError.from_oserror("open", path, exc) from exc
    try:
        return os.open(path, flags), False
    except OSError as exc:
        raise SyscallError.from_oserror("open", path, exc) from exc


def _aligned(length: int) -> mmap.mmap:
    return mmap.mmap(-1, max(length, mmap.PAGESIZE))


def read_at(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` straight from the device (offset and length sector-aligned)."""
    with read_mapped(path, offset, length) as data:
        return data[:]


@contextlib.contextmanager
def read_mapped(path: str, offset: int, length: int) -> Iterator[Head]:
    """Like :func:`read_at`, but the bytes stay in the anonymous mapping they were read into until the block ends.

    A large ``bytes`` copy, made in many worker threads, would be kept by each
    thread's malloc arena long after it is freed; the mapping is returned to the
    kernel at once. A short read gives the ``bytes`` read instead.
    """
    fd, _ = _open(path, write=False)
    try:
        buf = _aligned(length)
        try:
            done = os.preadv(fd, [memoryview(buf)[:length]], offset)
        except OSError as exc:
            buf.close()
            raise SyscallError.from_oserror("pread", path, exc) from exc
    finally:
        os.close(fd)
    try:
        yield buf if done == len(buf) else buf[:done]
    finally:
        buf.close()


@dataclass(frozen=True)
class Write:
    """``data`` at ``offset``; with ``data`` empty, ``zero_bytes`` zeros instead (no buffer is built for them)."""

    offset: int
    data: bytes = b""
    zero_bytes: int = 0

    @property
    def length(self) -> int:
        return len(self.data) or self.zero_bytes


def write_all(path: str, writes: list[Write], *, exclusive: bool = True) -> None:
    """Write each chunk in order, fsync after each, then drop the device's page cache if it was written through.

    With ``O_DIRECT`` (the normal case) the kernel already dropped the cached
    pages of every range written, so the whole-device ``BLKFLSBUF`` is skipped.

    ``exclusive`` opens with ``O_EXCL``: the kernel refuses (EBUSY) when the
    disk is mounted or held by another device, a last guard against writing to
    a disk someone is using.
    """
    fd, direct = _open(path, write=True, exclusive=exclusive)
    try:
        for chunk in writes:
            length = chunk.length
            buf = _aligned(length)  # anonymous memory: page-aligned for O_DIRECT, and already zero
            try:
                if chunk.data:
                    buf[:length] = chunk.data
                written = os.pwritev(fd, [memoryview(buf)[:length]], chunk.offset)
            finally:
                buf.close()
            if written != length:
                raise SyscallError("pwrite", errno.EIO, path, f"short write at {chunk.offset}")
            os.fsync(fd)
        if not direct:
            with contextlib.suppress(OSError):  # only a cache drop; the data is already on the device
                fcntl.ioctl(fd, BLKFLSBUF)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise SyscallError.from_oserror("open", path, exc, "the disk is in use (mounted or held)") from exc
        raise SyscallError.from_oserror("pwrite", path, exc) from exc
    finally:
        os.close(fd)


def discard(path: str, offset: int, length: int) -> bool:
    """BLKDISCARD a byte range; False when the device does not support it."""
    fd, _ = _open(path, write=True)
    try:
        fcntl.ioctl(fd, BLKDISCARD, struct.pack("=QQ", offset, length))
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            return False
        raise SyscallError.from_oserror("ioctl BLKDISCARD", path, exc) from exc
    finally:
        os.close(fd)


def reread_partitions(path: str) -> bool:
    """Ask the kernel to re-read the partition table (BLKRRPART).

    False when the kernel does not parse partitions on this device (EINVAL:
    no partition support or a loop device without partscan) or a partition is
    open (EBUSY); the caller falls back to a loop view of the partition range.
    """
    fd, _ = _open(path, write=False)
    try:
        fcntl.ioctl(fd, BLKRRPART)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EBUSY, errno.ENOTTY, errno.EOPNOTSUPP):
            return False
        raise SyscallError.from_oserror("ioctl BLKRRPART", path, exc) from exc
    finally:
        os.close(fd)
