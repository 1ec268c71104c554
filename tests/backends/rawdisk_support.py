"""Loop devices standing in for whole disks, reachable only through our own symlinks.

Each test gets a scratch directory with ``images/`` (sparse backing files) and
``dev/`` (one symlink per disk, ``disk-<name>`` → ``/dev/loopN``). The
allow-list pattern is ``<scratch>/dev/disk-*``, so the backend under test can
only ever see the loop devices this helper attached, never another helper's,
and a disk "added while running" is a new loop device plus a new symlink.

:func:`fake_disks` (the ``disks`` fixture of every rawdisk test), :func:`running`
(a started backend) and :func:`running_driver` (a driver process) are the
shared set-ups of the rawdisk tests.

Cleanup uses the plain tools (``umount``, ``losetup``), not the code under
test: mounts below the scratch dir, then every loop device backed by one of
our disks (the backend's partition views), then our disks, then the files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from backends.rawdisk.backend import RawdiskBackend
from backends.rawdisk.options import RawdiskOptions
from backends.system.runner import ProcessRunner
from tests.support import DriverProcess

MIB = 1 << 20
#: The node id of backends started by :func:`running`.
NODE = "node-a"


def sh(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, input=stdin)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def loop_backing(device: str) -> str:
    try:
        return Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file").read_text().strip()
    except OSError:
        return ""


def loops_over(devices: set[str]) -> list[str]:
    """Loop devices whose backing file is one of ``devices``."""
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        if loop_backing(entry.name) in devices:
            found.append(f"/dev/{entry.name}")
    return found


def mounts_below(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(str(root) + "/"):
            points.append(point)
    return points


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

    def cleanup(self) -> None:
        ours = set(self.devices.values())
        views = loops_over(ours)  # found before any lazy unmount renames their backing files
        disks = [device for device in ours if loop_backing(device).startswith(str(self.images))]
        for point in sorted(mounts_below(self.root), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for device in views + disks:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        self.devices.clear()
        shutil.rmtree(self.root, ignore_errors=True)


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


def rawdisk_driver(disks: FakeDisks, *, snapshots: bool = False) -> DriverProcess:
    """A driver process over ``disks`` (not started), with a snapshot directory when ``snapshots``."""
    args = ["--rawdisk-device", disks.pattern]
    if snapshots:
        args += ["--rawdisk-snapshot-dir", str(disks.root / "snapshots")]
    return DriverProcess(disks.root / "driver", backend="rawdisk", extra_args=tuple(args))


def running_driver(disks: FakeDisks, *, snapshots: bool = False) -> Iterator[DriverProcess]:
    """The body of a ``driver`` fixture: the driver process, then killed and every disk cleaned up."""
    proc = rawdisk_driver(disks, snapshots=snapshots)
    try:
        yield proc
    finally:
        proc.kill9()
        disks.cleanup()  # mounts below the driver's kubelet dir, then the partition views, then the disks
