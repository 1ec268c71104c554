"""Space promised is space kept: what GetCapacity reports and CreateVolume/CreateSnapshot admit never takes the
blocks a volume was promised. A real driver over its socket, its image directory a small filesystem of the
test's own, the volumes written through their loop devices as a pod would.

* thin volumes with ``--loopfile-overcommit 1.0``: snapshots taken after a thin volume took the rest of the
  space were accepted, and the thin volume's writes then failed (ENOSPC in the kernel, I/O errors in the pod);
* thick volumes on a reflink (xfs) directory: a snapshot makes the volume's later overwrites copy-on-write, and
  filling the directory with exactly the reported capacity made those overwrites fail;
* thick volumes anywhere: a discard (``fstrim``, which the node's fstrim.timer runs on every mounted
  filesystem, or the ``discard`` mount option) and the kernel's zeroing of a new ext4's inode tables punch holes
  into the fallocated image; a filler of exactly the reported capacity then took the blocks the volume needed
  to fill its own filesystem.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e.reliability import states
from tests.filesystems import driver_on_filesystem
from tests.lifecycle import Lifecycle, expect, from_volume, restore
from tests.support import MIB, Client, DriverProcess, block_cap, connect, create_request, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
THIN = {"loopfile.localcsi.dev/provisioning": "thin"}


@pytest.fixture
def small_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DriverProcess]:
    """A driver whose image directory is its own filesystem (``indirect`` parameter: kind and MiB)."""
    kind, size_mib = request.param
    with driver_on_filesystem(DriverProcess(tmp_path / "node"), kind, size_mib * MIB) as proc:
        yield proc


def write_device(path: Path, size: int, seed: int, *, chunk: int = MIB) -> None:
    """Write ``size`` bytes of fresh data through the device at ``path`` with direct I/O, as a pod's database
    would; an I/O error (ENOSPC in the image directory) fails the test."""
    error = states.write_device(path, size, seed, chunk)
    assert not error, f"writing {path} failed: {error}"


async def capacity(c: Client, parameters: dict[str, str] | None = None) -> int:
    resp = await c.controller.get_capacity(csi.GetCapacityRequest(parameters=parameters or {}))
    return int(resp.available_capacity)


async def snapshot(c: Client, name: str, volume_id: str) -> csi.Snapshot:
    resp = await c.controller.create_snapshot(csi.CreateSnapshotRequest(name=name, source_volume_id=volume_id))
    assert resp.snapshot is not None and resp.snapshot.ready_to_use
    return resp.snapshot


async def block_volume(c: Client, driver: DriverProcess, name: str, size: int,
                       parameters: dict[str, str] | None = None) -> Lifecycle:
    vol = Lifecycle(c, driver, name, block_cap(), size)
    resp = await c.controller.create_volume(create_request(name, size, vol.cap, parameters))
    assert resp.volume is not None
    vol.volume_id = resp.volume.volume_id
    await vol.stage(await vol.attach())
    await vol.publish()
    return vol


@pytest.mark.parametrize("small_dir", [("ext4", 320)], indirect=True)
async def test_snapshots_never_take_what_a_thin_volume_was_promised(small_dir: DriverProcess) -> None:
    """The issue's repro: with overcommit 1.0 three snapshots were accepted after a thin volume took the rest."""
    async with connect(small_dir.socket_path) as c:
        source = await block_volume(c, small_dir, "pvc-source", 64 * MIB)
        write_device(source.target, 48 * MIB, 1)
        await source.unpublish()  # a raw block volume in use has no consistent sparse copy
        await source.unstage()
        thin_bytes = await capacity(c, THIN)
        assert thin_bytes > 128 * MIB
        thin = await block_volume(c, small_dir, "pvc-thin", thin_bytes, THIN)
        assert await capacity(c) < MIB  # all of it is promised now
        for index in range(3):
            error = await expect(Status.RESOURCE_EXHAUSTED, c.controller.create_snapshot(csi.CreateSnapshotRequest(
                name=f"snap-{index}", source_volume_id=source.volume_id)))
            assert "not enough space" in (error.message or "")
        await expect(Status.RESOURCE_EXHAUSTED, c.controller.create_volume(
            restore("pvc-clone", from_volume(source.volume_id), 64 * MIB)))
        write_device(thin.target, thin_bytes, 2)  # the whole thin volume: no ENOSPC anywhere
        assert list((small_dir.data_dir / "snapshots").iterdir()) == []


@pytest.mark.parametrize("small_dir", [("xfs", 1024)], indirect=True)
async def test_a_thick_volume_shared_with_its_snapshot_can_overwrite_every_block(small_dir: DriverProcess) -> None:
    """On reflink xfs: snapshot, fill the directory with a thick volume of exactly the reported capacity, then
    overwrite the thick volume completely through its loop device."""
    async with connect(small_dir.socket_path) as c:
        vol = await block_volume(c, small_dir, "pvc-thick", 256 * MIB)
        write_device(vol.target, 256 * MIB, 1)
        before = await capacity(c)
        await snapshot(c, "snap-cow", vol.volume_id)
        after = await capacity(c)
        # Copy-on-write: every block the volume shares with its snapshot is promised a second time.
        assert before - after >= 256 * MIB, (before, after)
        filler = await c.controller.create_volume(create_request("pvc-filler", after))
        assert filler.volume is not None
        await expect(Status.RESOURCE_EXHAUSTED, c.controller.create_volume(create_request("pvc-more", MIB)))
        write_device(vol.target, 256 * MIB, 2)
        write_device(vol.target, 256 * MIB, 3, chunk=64 * 1024)  # and again, in small writes


@pytest.mark.parametrize("small_dir", [("ext4", 384)], indirect=True)
async def test_a_thick_filesystem_volume_keeps_the_blocks_a_discard_punched_out(small_dir: DriverProcess) -> None:
    """A discard of the free space of a thick ext4 volume punches holes into its image: they stay promised."""
    async with connect(small_dir.socket_path) as c:
        vol = Lifecycle(c, small_dir, "pvc-fs", mount_cap("ext4"), 128 * MIB)
        await vol.up()
        subprocess.run(["fstrim", str(vol.target)], check=True, capture_output=True)
        image = small_dir.data_dir / f"{vol.volume_id}.img"
        assert image.stat().st_blocks * 512 < 64 * MIB  # the discard really punched holes
        filler = await c.controller.create_volume(create_request("pvc-filler", await capacity(c)))
        assert filler.volume is not None
        written, chunk = 0, os.urandom(MIB)
        fd = os.open(vol.target / "fill.bin", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                    written += MIB
                except OSError as exc:  # the filesystem on the volume is full: that is the only way out
                    assert exc.errno == errno.ENOSPC
                    break
            os.fsync(fd)  # every block reached the image: no I/O error
        finally:
            os.close(fd)
        assert written > 96 * MIB
        usage = os.statvfs(vol.target)
        assert usage.f_bavail * usage.f_frsize < 2 * MIB
