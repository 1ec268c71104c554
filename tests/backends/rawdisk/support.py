"""Loop devices standing in for whole disks, reachable only through our own symlinks.

Each test gets a scratch directory with ``images/`` (sparse backing files) and
``dev/`` (one symlink per disk, ``disk-<name>`` → ``/dev/loopN``). The
allow-list pattern is ``<scratch>/dev/disk-*``, so the backend under test can
only ever see the loop devices this helper attached, never another helper's,
and a disk "added while running" is a new loop device plus a new symlink.

:func:`fake_disks` (the ``disks`` fixture of every rawdisk test), :func:`running`
(a started backend) and :func:`running_driver` (a driver process) are the
shared set-ups of the rawdisk tests.

Cleanup uses :mod:`e2e.leaks` and the plain tools (``umount``, ``losetup``), not
the code under test: mounts below the scratch dir, then every loop device backed
by one of our disks (the backend's partition views), then our disks, then the files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from backends.rawdisk.backend import RawdiskBackend
from backends.rawdisk.options import RawdiskOptions
from backends.system.runner import ProcessRunner
from e2e import leaks
from tests.support import DriverProcess, localcsi

MIB = 1 << 20
#: The node id of backends started by :func:`running`.
NODE = "node-a"


def sh(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, input=stdin)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class FakeDisks:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="localcsi-rawdisk-"))
        self.images = self.root / "images"
        self.dev = self.root / "dev"
        self.images.mkdir()
        self.dev.mkdir()
        #: symlink name -> loop device
        self.devices: dict[str, str] = {}

    @property
    def pattern(self) -> str:
        return str(self.dev / "disk-*")

    def link(self, name: str) -> str:
        return str(self.dev / f"disk-{name}")

    def add(self, name: str, size: int, *, readonly: bool = False, partscan: bool = False, sector: int = 512,
            prepare: Callable[[str], None] | None = None) -> str:
        """Attach a sparse image as a loop device, optionally prepare it, then make it visible."""
        image = self.images / f"{name}.img"
        with image.open("wb") as handle:
            handle.truncate(size)
        if prepare is not None:
            prepare(str(image))
        argv = ["losetup", "--find", "--show", "--sector-size", str(sector)]
        argv += (["--read-only"] if readonly else []) + (["--partscan"] if partscan else []) + [str(image)]
        device = sh(*argv).strip()
        self.devices[name] = device
        os.symlink(device, self.link(name))
        return device

    def remove(self, name: str) -> str:
        """Unplug a disk: the symlink first (so a reused loop number is never ours), then the device."""
        device = self.devices.pop(name)
        os.unlink(self.link(name))
        sh("losetup", "-d", device)
        return device

    def head(self, name: str, length: int = 2 * MIB) -> bytes:
        with open(self.images / f"{name}.img", "rb") as handle:
            return handle.read(length)

    def leak_scope(self, kubelet_dir: Path | None = None) -> leaks.Scope:
        """Where a backend over these disks may leave something: views over them, claims on them, mounts."""
        return leaks.Scope(kubelet_dir=kubelet_dir, disks=tuple(self.devices.values()))

    def cleanup(self) -> None:
        # Found before the unmounts: a lazy unmount renames the files the kernel says back these loops.
        views = leaks.loops_backed_by(self.devices.values())
        disks = leaks.loops_backed_under(self.images)  # our disks, known by their backing files
        for point in sorted(leaks.mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for loop in views + disks:
            subprocess.run(["losetup", "-d", loop.device], capture_output=True, check=False)
        self.devices.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def disk_states(patterns: list[str]) -> dict[str, dict[str, object]]:
    """``localcsi disks --json`` over ``patterns``: disk name (``disk-`` stripped) -> its entry."""
    argv = ["disks", "--json"]
    for pattern in patterns:
        argv += ["--rawdisk-device", pattern]
    out = localcsi(*argv, check=True).stdout
    return {os.path.basename(str(d["path"])).removeprefix("disk-"): d for d in json.loads(out)["disks"]}


def write_foreign_gpt(image: str) -> None:
    sh("sfdisk", "--quiet", image, stdin="label: gpt\n,\n")


def make_ext4(image: str) -> None:
    sh("mkfs.ext4", "-q", "-F", image)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()



def fake_disks() -> Iterator[FakeDisks]:
    """A fresh scratch set of disks, cleaned up after the test.

    A test module makes it its ``disks`` fixture: ``disks = pytest.fixture(fake_disks, name="disks")``.
    """
    fake = FakeDisks()
    try:
        yield fake
    finally:
        fake.cleanup()


@asynccontextmanager
async def running(disks: FakeDisks, snapshot_dir: Path | None = None, *,
                  watch: bool = False) -> AsyncIterator[RawdiskBackend]:
    """A started backend over ``disks`` (snapshots in ``snapshot_dir`` when given), closed afterwards."""
    options = RawdiskOptions(devices=(disks.pattern,), snapshot_dir=str(snapshot_dir) if snapshot_dir else "")
    backend = RawdiskBackend(NODE, options, ProcessRunner(), watch=watch)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


@dataclass
class RawdiskDriver(DriverProcess):
    """A driver over fake disks: its leaks are mounts under its kubelet dir, views over the disks, claims on them."""

    disks: FakeDisks | None = None

    def leak_scope(self) -> leaks.Scope:
        assert self.disks is not None
        return self.disks.leak_scope(self.kubelet_dir)


def rawdisk_driver(disks: FakeDisks, *, snapshots: bool = False) -> RawdiskDriver:
    """A driver process over ``disks`` (not started), with a snapshot directory when ``snapshots``."""
    args = ["--rawdisk-device", disks.pattern]
    if snapshots:
        args += ["--rawdisk-snapshot-dir", str(disks.root / "snapshots")]
    return RawdiskDriver(disks.root / "driver", backend="rawdisk", extra_args=tuple(args), disks=disks)


def running_driver(disks: FakeDisks, *, snapshots: bool = False) -> Iterator[DriverProcess]:
    """The body of a ``driver`` fixture: the driver process, then killed and every disk cleaned up."""
    proc = rawdisk_driver(disks, snapshots=snapshots)
    try:
        yield proc
    finally:
        proc.kill9()
        disks.cleanup()  # mounts below the driver's kubelet dir, then the partition views, then the disks
