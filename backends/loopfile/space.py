"""The space the loopfile backend has promised its volumes, and what each operation costs. Pure functions.

A volume may at any time write every one of its blocks, so the image directory's filesystem owes it every
block that writing would allocate:

* its holes: ``capacity - allocated``. For a thin image that is its unallocated part; a thick image has
  holes too once a discard or a zeroing reached it (mke2fs zeroes its journal and the kernel its inode
  tables with unmapping write-zeroes, which the loop driver turns into punched holes);
* its shared bytes: on a reflink filesystem (xfs, btrfs) a snapshot, clone or restore shares extents with
  its source, and overwriting a shared block writes a new one (copy-on-write). Measured on xfs: a thick
  volume overwritten completely after a snapshot allocates exactly its shared bytes, sequentially or in
  random 4 KiB writes; the extent-tree blocks those writes need come from xfs's own reserve.

A thick volume is owed all of that; a thin one that divided by the overcommit ratio (1.0: all of it too).
Snapshots are owed nothing: they are never written. What a new operation may take is the free space less
every promise less what operations admitted before it still hold (:mod:`backends.reservations`).

An operation is admitted for what it will take, and holds that until its result shows in the files and the
index:

* a new blank volume: its size (thin: divided by the ratio);
* growing a volume: the growth (thin: divided by the ratio);
* a snapshot: the bytes its source has allocated, either way: a sparse copy writes them now, a reflink
  copy makes them shared, so the source's later overwrites write them again;
* a restore or clone of ``size`` bytes from a source with ``A`` allocated bytes: thick ``size``, thin
  ``A + (size - A) / ratio``; and ``A`` more when it is a reflink of a live volume, whose blocks become
  shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MIB = 1 << 20
#: Below this much free space the image directory's filesystem counts as full: an overcommitted thin volume
#: that may still write more than that is failing (writes to its unallocated parts get I/O errors).
FULL_BYTES = 16 * MIB
#: Kept back from what is offered: the room the records of an operation need (a volume's or snapshot's JSON
#: record, written beside its image, and the temporary copy it is renamed from), so that a volume of exactly
#: the capacity reported still gets its record written.
RECORD_HEADROOM_BYTES = 1 * MIB


@dataclass(frozen=True)
class ImageUse:
    """What the accounting needs of one volume's image, measured now."""

    capacity_bytes: int
    #: The image file's length (0 for a missing image).
    size_bytes: int
    #: Bytes of the image with blocks behind them (``st_blocks``); 0 for a missing image.
    allocated_bytes: int
    #: Bytes of the image that share extents with another file (0 without reflink).
    shared_bytes: int
    thin: bool
    #: The image file exists (a missing one is owed nothing: it cannot be written).
    present: bool = True


def _scaled(nbytes: int, thin: bool, ratio: float) -> int:
    return math.ceil(nbytes / ratio) if thin else nbytes


def exposure_bytes(use: ImageUse) -> int:
    """Bytes the filesystem must still give this volume for it to overwrite every block."""
    if not use.present:
        return 0
    return max(0, use.capacity_bytes - use.allocated_bytes) + use.shared_bytes


def promised_bytes(use: ImageUse, ratio: float) -> int:
    """What the backend has promised this volume (its exposure; thin: divided by the ratio)."""
    return _scaled(exposure_bytes(use), use.thin, ratio)


def short_of_space(use: ImageUse, free_bytes: int, ratio: float) -> bool:
    """Whether the free space cannot back what the volume may still write: a volume promised in full (thick,
    or thin without overcommit) whose exposure exceeds the free space, or an overcommitted thin volume on a
    full filesystem. Its next writes to unallocated (or shared) blocks then fail."""
    exposure = exposure_bytes(use)
    limit = min(exposure, FULL_BYTES) if use.thin and ratio > 1.0 else exposure
    return exposure > 0 and free_bytes < limit


def available_bytes(free_bytes: int, uses: Iterable[ImageUse], ratio: float) -> int:
    """Free space less every promise and the records' headroom, in whole MiB."""
    available = max(0, free_bytes - sum(promised_bytes(u, ratio) for u in uses) - RECORD_HEADROOM_BYTES)
    return available - available % MIB


def volume_cost(size_bytes: int, thin: bool, ratio: float) -> int:
    """What a new blank volume of ``size_bytes``, or a growth by that much, takes."""
    return _scaled(size_bytes, thin, ratio)


def snapshot_cost(source_allocated_bytes: int) -> int:
    return source_allocated_bytes


def copy_cost(size_bytes: int, source_allocated_bytes: int, thin: bool, ratio: float, *,
              shares_live_volume: bool) -> int:
    """What a restore or clone of ``size_bytes`` takes, copied from a source with that many allocated bytes."""
    copied = min(source_allocated_bytes, size_bytes)
    own = size_bytes if not thin else copied + _scaled(size_bytes - copied, thin, ratio)
    return own + (source_allocated_bytes if shares_live_volume else 0)
