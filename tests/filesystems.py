"""Scratch filesystems for tests: a sparse image file, formatted, loop-mounted where the test wants it.

The image lives in a temporary directory of its own and goes with the mount, whatever the test did: a test
that left a file open is detached lazily (the loop device follows its last user).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support import DriverProcess, force_cleanup

MIB = 1 << 20

#: mkfs per kind: xfs shares extents (reflink), ext4 without blocks reserved for root (full means full).
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-m", "0"],
}


@contextlib.contextmanager
def mounted_filesystem(kind: str, size: int, at: Path) -> Iterator[Path]:
    """An empty ``kind`` filesystem of ``size`` bytes mounted at ``at`` (made if missing), removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=f"localcsi-{kind}-"))
    image = scratch / "fs.img"
    with image.open("wb") as handle:
        handle.truncate(size)
    subprocess.run([*MKFS[kind], str(image)], check=True, capture_output=True)
    at.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(at)], check=True)
    try:
        yield at
    finally:
        if subprocess.run(["umount", str(at)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(at)], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def free_bytes(path: Path) -> int:
    subprocess.run(["sync", "-f", str(path)], check=True)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_up(path: Path) -> None:
    """Write ``path`` (a new file) until its filesystem has not one block left (1 MiB writes, then ever smaller
    ones: the last free blocks of a 1 KiB-block ext4 take 512-byte writes)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        for chunk in (os.urandom(MIB), os.urandom(4096), os.urandom(512)):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def driver_on_filesystem(proc: DriverProcess, kind: str, size: int) -> Iterator[DriverProcess]:
    """``proc`` started with its image directory on a ``kind`` filesystem of its own, cleaned up afterwards."""
    with mounted_filesystem(kind, size, proc.data_dir):
        try:
            proc.start()
            yield proc
        finally:
            proc.kill9()
            force_cleanup(proc.root, proc.data_dir)
