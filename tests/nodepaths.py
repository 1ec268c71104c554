"""One volume driven through the node calls the way kubelet lays out its paths, and foreign mounts to attack with.

Shared by the node-rule tests and the spec error-table tests: both talk to a real ``localcsi serve`` over its unix
socket (tests/support.py) and look at the result with the plain tools, never with the code under test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from csi.gen.csi import v1 as csi
from e2e import leaks
from tests.support import MIB, NODE_ID, Client, DriverProcess, create_request

#: A well-formed volume id the driver never issued.
UNKNOWN_ID = "lcv-" + "0" * 32


def kubelet_driver(root: Path, *extra: str, backend: str = "loopfile") -> DriverProcess:
    """A driver (not started) that accepts paths strictly below its own ``kubelet`` directory only."""
    return DriverProcess(root, backend=backend, extra_args=("--kubelet-dir", str(root / "kubelet"), *extra))


def is_mount_point(path: Path) -> bool:
    return leaks.mount_count(path) > 0


@contextlib.contextmanager
def foreign_tmpfs(path: Path, content: bytes = b"not yours") -> Iterator[Path]:
    """A tmpfs nobody asked the driver about, mounted at ``path`` and holding one file; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(path)], check=True)
    try:
        (path / "precious").write_bytes(content)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def assert_foreign_intact(path: Path, content: bytes = b"not yours") -> None:
    assert is_mount_point(path), f"{path} was unmounted"
    assert (path / "precious").read_bytes() == content, f"{path} lost its content"


class Volume:
    """A volume and the paths kubelet would give it, below the driver's kubelet directory."""

    def __init__(self, c: Client, driver: DriverProcess, name: str, cap: csi.VolumeCapability,
                 size: int = 64 * MIB, parameters: dict[str, str] | None = None) -> None:
        self.c, self.name, self.cap, self.size = c, name, cap, size
        self.parameters = parameters or {}
        self.volume_id = ""
        self.staging = driver.kubelet_dir / "plugins" / name / "globalmount"
        self.target = driver.kubelet_dir / "pods" / name / "mount"
        self.block = cap.block is not None

    async def create(self) -> Volume:
        resp = await self.c.controller.create_volume(create_request(self.name, self.size, self.cap, self.parameters))
        assert resp.volume is not None
        self.volume_id = resp.volume.volume_id
        return self

    def stage_request(self, staging: Path | str | None = None) -> csi.NodeStageVolumeRequest:
        return csi.NodeStageVolumeRequest(volume_id=self.volume_id, staging_target_path=str(staging or self.staging),
                                          volume_capability=self.cap)

    async def stage(self, staging: Path | None = None) -> None:
        (staging or self.staging).mkdir(parents=True, exist_ok=True)
        await self.c.node.node_stage_volume(self.stage_request(staging))

    def publish_request(self, target: Path | str | None = None, staging: Path | str | None = None,
                        readonly: bool = False) -> csi.NodePublishVolumeRequest:
        return csi.NodePublishVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(staging or self.staging),
            target_path=str(target or self.target), volume_capability=self.cap, readonly=readonly)

    async def publish(self, target: Path | None = None, readonly: bool = False) -> None:
        (target or self.target).parent.mkdir(parents=True, exist_ok=True)
        await self.c.node.node_publish_volume(self.publish_request(target, readonly=readonly))

    async def unpublish(self, target: Path | None = None) -> None:
        await self.c.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
            volume_id=self.volume_id, target_path=str(target or self.target)))

    async def unstage(self, staging: Path | None = None) -> None:
        await self.c.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(staging or self.staging)))

    async def up(self) -> Volume:
        await self.create()
        await self.c.controller.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=self.volume_id, node_id=NODE_ID, volume_capability=self.cap))
        await self.stage()
        await self.publish()
        return self

    async def down(self) -> None:
        await self.unpublish()
        await self.unstage()
        await self.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
            volume_id=self.volume_id, node_id=NODE_ID))
        await self.c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=self.volume_id))

    def write(self, data: bytes, name: str = "data.bin") -> None:
        """Through the published target: a file at the filesystem's root, or at offset 4096 of a block target."""
        fd = os.open(self.target if self.block else self.target / name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if self.block:
                os.pwrite(fd, data, 4096)
            else:
                os.ftruncate(fd, 0)
                os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, size: int, name: str = "data.bin") -> bytes:
        fd = os.open(self.target if self.block else self.target / name, os.O_RDONLY)
        try:
            return os.pread(fd, size, 4096 if self.block else 0)
        finally:
            os.close(fd)
