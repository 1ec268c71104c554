"""The harness's own hands on the machine: commands, loop devices, sparse files, a reboot's unmounts.

Deliberately independent of ``backends/system``: reboots and cleanups must not
trust the code under test; what is left behind is :mod:`e2e.leaks`' to find.
Blocking calls are small and go through :func:`anyio.to_thread.run_sync` where
a caller is async.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio

from e2e import leaks

COMMAND_TIMEOUT = 60.0


class HostCommandError(RuntimeError):
    """A harness-side command failed."""


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
    points = sorted(set(leaks.mounts_under(root)), key=len, reverse=True)
    for point in points:
        for _ in range(leaks.mount_count(point)):
            run(["umount", point])
    return points


def detach_loop(device: str) -> None:
    run(["losetup", "-d", device])


def attach_loop(backing_file: Path) -> str:
    return run(["losetup", "--find", "--show", str(backing_file)]).strip()


def make_sparse_file(path: Path, size_bytes: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size_bytes)
