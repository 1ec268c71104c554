"""What every phase shares: the phase result record, a scratch node, and outside-world snapshots.

Leak and escape checks read mountinfo and sysfs through :mod:`e2e.leaks`,
never through the driver's own code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.sim import host
from e2e.sim.driver import DriverInstance
from e2e.sim.stats import Stats

MIB = 1 << 20
NODE_ID = "rel-node"
DRIVER_NAME = "localcsi.dev"
#: Codes a driver may answer a client mistake with (the spec's error tables); anything else is a finding.
DOCUMENTED = frozenset({
    Status.OK, Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS, Status.OUT_OF_RANGE,
    Status.RESOURCE_EXHAUSTED, Status.FAILED_PRECONDITION, Status.ABORTED, Status.UNIMPLEMENTED,
})


#: StorageClass parameters of a thin loopfile volume: it costs only what is written.
THIN = {"loopfile.localcsi.dev/provisioning": "thin"}
Mode = csi.VolumeCapabilityAccessModeMode


def mount_cap(fs_type: str = "ext4") -> csi.VolumeCapability:
    return csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type),
                                access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER))


def block_cap() -> csi.VolumeCapability:
    return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(),
                                access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER))


@dataclass
class PhaseResult:
    """One phase's figures and findings; any finding fails the campaign."""

    name: str
    figures: dict[str, object] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        self.findings.append(message)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.findings.append(message)

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass
class ScratchNode:
    """A driver on a size-limited tmpfs data dir with its own kubelet dir, torn down whatever happens."""

    root: Path
    driver: DriverInstance
    extra_args: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "storage" / "volumes"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    def image(self, volume_id: str) -> Path:
        return self.data_dir / f"{volume_id}.img"


def loopfile_args(data_dir: Path, kubelet_dir: Path, extra: list[str] | None = None) -> list[str]:
    return ["--node-id", NODE_ID, "--driver-name", DRIVER_NAME, "--backend", "loopfile",
            "--loopfile-dir", str(data_dir), "--kubelet-dir", str(kubelet_dir), *(extra or [])]


def driver_args(root: Path, extra: list[str]) -> list[str]:
    return loopfile_args(root / "storage" / "volumes", root / "kubelet", extra)


@contextlib.asynccontextmanager
async def scratch_node(prefix: str, storage_bytes: int, extra: list[str] | None = None,
                       stats: Stats | None = None) -> AsyncIterator[ScratchNode]:
    root = Path(tempfile.mkdtemp(prefix=f"rel-{prefix}-"))
    storage = root / "storage"
    await anyio.Path(storage).mkdir()
    await anyio.Path(root / "kubelet").mkdir()
    await host.arun(["mount", "-t", "tmpfs", "-o", f"size={storage_bytes},mode=0700", "localcsi-rel", str(storage)])
    node = ScratchNode(root, DriverInstance(root, driver_args(root, extra or []), stats or Stats()), extra or [])
    try:
        await node.driver.start()
        yield node
    finally:
        with anyio.CancelScope(shield=True):
            await teardown(node)


async def teardown(node: ScratchNode) -> None:
    with contextlib.suppress(Exception):
        await node.driver.kill9()
    node.driver._close_log()
    await anyio.to_thread.run_sync(force_clean, node.root)


def force_clean(root: Path) -> None:
    """Unmount everything under ``root`` (deepest first), detach its loop devices, remove it.

    The loop devices are found first: once a lazy unmount detaches the filesystem their files live on, the
    kernel names those files relative to it (``/volumes/...``) and they no longer look like ours.
    """
    loops = leaks.loops_backed_under(root)
    for point in sorted(set(leaks.mounts_under(root)), key=len, reverse=True):
        for _ in range(leaks.mount_count(point)):
            host.run(["umount", "-l", point], check=False)
    for info in loops:
        host.run(["losetup", "-d", info.device], check=False)
    if not leaks.mounts_under(root):
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class FilesystemNode:
    """A driver whose image directory lives on a loop-mounted filesystem of this node's own."""

    root: Path
    driver: DriverInstance

    @property
    def mount_point(self) -> Path:
        return self.root / "fs"

    @property
    def data_dir(self) -> Path:
        return self.mount_point / "volumes"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"


MKFS = {"ext4": ["mkfs.ext4", "-q", "-m", "0"], "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"]}


@contextlib.asynccontextmanager
async def filesystem_node(prefix: str, kind: str, size_bytes: int, extra: list[str] | None = None, *,
                          start: bool = True) -> AsyncIterator[FilesystemNode]:
    """A ``kind`` filesystem of ``size_bytes`` (a sparse file on a loop device) holding the driver's images;
    the driver started when ``start``; everything torn down afterwards, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix=f"rel-{prefix}-"))
    backing = root / "fs.img"
    node = FilesystemNode(root, DriverInstance(root, [], Stats()))
    node.driver.argv_tail = loopfile_args(node.data_dir, node.kubelet_dir, extra)
    await anyio.Path(node.mount_point).mkdir()
    await anyio.Path(node.kubelet_dir).mkdir()
    await anyio.to_thread.run_sync(host.make_sparse_file, backing, size_bytes)
    await host.arun([*MKFS[kind], str(backing)])
    device = await anyio.to_thread.run_sync(host.attach_loop, backing)
    try:
        await host.arun(["mount", str(device), str(node.mount_point)])
        if start:
            await node.driver.start()
        yield node
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await node.driver.kill9()
            node.driver._close_log()
            await anyio.to_thread.run_sync(force_clean, node.kubelet_dir)
            for info in leaks.loops_backed_under(node.mount_point):
                await host.arun(["losetup", "-d", info.device], check=False)
            await host.arun(["umount", "-l", str(node.mount_point)], check=False)
            await host.arun(["losetup", "-d", device], check=False)
            await anyio.to_thread.run_sync(force_clean, root)


def tree_state(path: Path) -> dict[str, tuple[int, int, int, str]]:
    """(mode, size, mtime ns, link target) of everything under ``path``, for before/after comparison."""
    state: dict[str, tuple[int, int, int, str]] = {}
    if not path.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            target = os.readlink(full) if full.is_symlink() else ""
            state[str(full)] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return state


def listing(path: Path, *, skip_prefixes: tuple[str, ...] = ()) -> set[str]:
    try:
        return {n for n in os.listdir(path) if not n.startswith(skip_prefixes)}
    except OSError:
        return set()


def log_lines(node: ScratchNode) -> list[str]:
    try:
        return node.driver.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
