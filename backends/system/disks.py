"""Facts about whole disks, from sysfs, ``/proc/swaps`` and mountinfo (no processes).

:func:`inspect_all` answers, for each allow-listed device node, what the
rawdisk backend needs to decide whether it may touch it: size, sector size,
read-only flag, whether it is a partition or a stacked device, who holds it,
where it (or one of its partitions) is mounted and whether it is swap. Every
function here blocks (sysfs reads, glob); callers run it in a worker thread.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.system import blkid
from backends.system import mount as mnt
from backends.system.runner import Runner

SYS_CLASS_BLOCK = Path("/sys/class/block")
PROC_SWAPS = Path("/proc/swaps")


@dataclass(frozen=True)
class Match:
    """A device node an allow-list pattern matched: the path as matched, and where it leads."""

    pattern: str
    path: str
    real_path: str


@dataclass(frozen=True)
class DiskFacts:
    path: str
    name: str
    exists: bool
    is_block: bool = False
    major_minor: str = ""
    size_bytes: int = 0
    sector_bytes: int = 512
    readonly: bool = False
    is_partition: bool = False
    #: "dm" or "md" for stacked devices, "" for plain disks.
    stacked: str = ""
    holders: tuple[str, ...] = ()
    #: Kernel partition devices of this disk: (name, number).
    partitions: tuple[tuple[str, int], ...] = ()
    #: Holders of any of its partitions.
    partition_holders: tuple[str, ...] = ()
    mount_points: tuple[str, ...] = ()
    swap: bool = False
    #: For a loop device: its backing file ("" when detached or not a loop device).
    loop_backing: str = ""
    discard: bool = False


def expand(patterns: Iterable[str]) -> list[Match]:
    """Every existing path the glob patterns match, one entry per real device (first match wins)."""
    seen: set[str] = set()
    matches: list[Match] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            matches.append(Match(pattern, path, real))
    return matches


def matches_any(real_path: str, patterns: Iterable[str]) -> bool:
    """Whether a device path is on the allow-list (directly or through a matched symlink)."""
    return any(m.real_path == real_path for m in expand(patterns))


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _int(path: Path, default: int = 0) -> int:
    try:
        return int(_read(path, str(default)))
    except ValueError:
        return default


def _listdir(path: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def read_swaps() -> set[str]:
    """Device paths in use as swap (resolved)."""
    lines = _read(PROC_SWAPS).splitlines()[1:]
    return {os.path.realpath(line.split()[0]) for line in lines if line.split()}


def partitions_of(name: str) -> tuple[tuple[str, int], ...]:
    """Kernel partition devices of disk ``name``: (child name, partition number)."""
    found = []
    for child in _listdir(SYS_CLASS_BLOCK / name):
        number = _read(SYS_CLASS_BLOCK / name / child / "partition")
        if number.isdigit():
            found.append((child, int(number)))
    return tuple(sorted(found, key=lambda item: item[1]))


def partition_device(name: str, number: int) -> str | None:
    """``/dev/<child>`` of partition ``number`` of disk ``name`` when the kernel shows it."""
    for child, index in partitions_of(name):
        if index == number and os.path.exists(f"/dev/{child}"):
            return f"/dev/{child}"
    return None


def partition_matching(name: str, number: int, offset: int, length: int) -> str | None:
    """``/dev/<child>`` of partition ``number`` of disk ``name`` when the kernel shows it starting at byte
    ``offset`` and ``length`` bytes long (sysfs counts 512-byte sectors); None otherwise."""
    for child, index in partitions_of(name):
        if index != number:
            continue
        start, size = _int(SYS_CLASS_BLOCK / child / "start", -1), _int(SYS_CLASS_BLOCK / child / "size", -1)
        return f"/dev/{child}" if (start * 512, size * 512) == (offset, length) else None
    return None


def inspect(path: str, mounts: Sequence[mnt.MountInfo], swaps: set[str]) -> DiskFacts:
    """Facts about one device node (``path`` is resolved: /dev/X)."""
    name = os.path.basename(path)
    try:
        st = os.stat(path)
    except OSError:
        return DiskFacts(path, name, exists=False)
    if not stat.S_ISBLK(st.st_mode):
        return DiskFacts(path, name, exists=True, is_block=False)
    sys = SYS_CLASS_BLOCK / name
    major_minor = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    partitions = partitions_of(name)
    devs = {major_minor} | {_read(SYS_CLASS_BLOCK / child / "dev") for child, _ in partitions}
    nodes = {f"/{name}"} | {f"/{child}" for child, _ in partitions}
    points = tuple(sorted({
        m.mount_point for m in mounts
        if m.major_minor in devs or (m.fs_type == "devtmpfs" and m.root in nodes)
    }))
    stacked = "dm" if (sys / "dm").exists() else "md" if (sys / "md").exists() else ""
    part_holders = tuple(h for child, _ in partitions for h in _listdir(SYS_CLASS_BLOCK / child / "holders"))
    swap_paths = {path} | {f"/dev/{child}" for child, _ in partitions}
    return DiskFacts(
        path=path,
        name=name,
        exists=True,
        is_block=True,
        major_minor=major_minor,
        size_bytes=_int(sys / "size") * 512,
        sector_bytes=_int(sys / "queue" / "logical_block_size", 512) or 512,
        readonly=_read(sys / "ro") == "1",
        is_partition=(sys / "partition").exists(),
        stacked=stacked,
        holders=_listdir(sys / "holders"),
        partitions=partitions,
        partition_holders=part_holders,
        mount_points=points,
        swap=bool(swap_paths & swaps),
        loop_backing=_read(sys / "loop" / "backing_file"),
        discard=_int(sys / "queue" / "discard_max_bytes") > 0,
    )


def inspect_all(paths: Iterable[str]) -> dict[str, DiskFacts]:
    """Facts about several devices, reading mountinfo and /proc/swaps once."""
    mounts = mnt.parse_mountinfo(_read(Path(mnt.MOUNTINFO)))
    swaps = read_swaps()
    return {path: inspect(path, mounts, swaps) for path in paths}


async def probe_range(runner: Runner, path: str, offset: int, size: int) -> blkid.Probe:
    """``blkid -p`` of a byte range of a device (a partition the kernel does not show)."""
    argv = [blkid.BLKID, "-p", "-o", "export", "-O", str(offset), "-S", str(size), path]
    result = await runner.run(argv, timeout=blkid.PROBE_TIMEOUT, check=False)
    return blkid.Probe.from_result(result)
