"""The harness's own view of the machine: mounts, loop devices, files.

Deliberately independent of ``backends/system``: leak checks and reboots must
not trust the code under test. Blocking reads are small (sysfs, mountinfo) and
go through :func:`anyio.to_thread.run_sync` where a caller is async.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio

COMMAND_TIMEOUT = 60.0
_ESCAPES = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))


class HostCommandError(RuntimeError):
    """A harness-side command failed."""


@dataclass(frozen=True)
class LoopInfo:
    device: str
    backing_file: str


def _unescape(field: str) -> str:
    for escaped, char in _ESCAPES:
        field = field.replace(escaped, char)
    return field


def mount_points() -> list[str]:
    """Every mount point in this mount namespace, in mountinfo order (duplicates kept)."""
    text = Path("/proc/self/mountinfo").read_text()
    return [_unescape(line.split()[4]) for line in text.splitlines() if line]


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    return [p for p in mount_points() if p == str(root) or p.startswith(prefix)]


def mount_count(path: Path) -> int:
    return sum(1 for p in mount_points() if p == str(path))


def attached_loops() -> list[LoopInfo]:
    found = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        found.append(LoopInfo(f"/dev/{entry.name}", backing))
    return found


def loops_backed_under(directory: Path) -> list[LoopInfo]:
    prefix = str(directory).rstrip("/") + "/"
    return [info for info in attached_loops() if info.backing_file.startswith(prefix)]


def run(argv: list[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run one command (argv only, no shell, C locale, bounded); return stdout."""
    env = {**os.environ, "LC_ALL": "C"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HostCommandError(f"{argv[0]} timed out after {timeout} s") from exc
    if check and done.returncode != 0:
        raise HostCommandError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


async def arun(argv: list[str], *, check: bool = True, limit_seconds: float = COMMAND_TIMEOUT) -> str:
    return await anyio.to_thread.run_sync(lambda: run(argv, check=check, timeout=limit_seconds))


def unmount_all_under(root: Path) -> list[str]:
    """Unmount every mount under ``root``, deepest first (a reboot's effect on the kubelet dir)."""
    points = sorted(set(mounts_under(root)), key=len, reverse=True)
    for point in points:
        for _ in range(mount_count(Path(point))):
            run(["umount", point])
    return points


def detach_loop(device: str) -> None:
    run(["losetup", "-d", device])


def attach_loop(backing_file: Path) -> str:
    return run(["losetup", "--find", "--show", str(backing_file)]).strip()


def make_sparse_file(path: Path, size_bytes: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size_bytes)
