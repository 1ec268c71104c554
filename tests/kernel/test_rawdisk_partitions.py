"""The rawdisk backend on a kernel that parses partition tables (the kernel lane, hack/vmtest).

The host kernel here has no GPT support, so attach() uses a loop view of the
partition range (tests/backends/rawdisk/test_backend.py). Real nodes, and the Debian
kernel the lane boots, show ``/dev/<disk>p1`` once our GPT is written; these
tests prove attach() then returns the kernel's partition device, that the data
lands in the partition range, and that delete makes the partition vanish.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from backends import errors
from backends.base import AccessType, ContentSource, SourceKind, VolumeSpec
from backends.rawdisk.backend import RawdiskBackend
from backends.rawdisk.inventory import State
from backends.rawdisk.options import RawdiskOptions
from backends.system import gpt
from backends.system.runner import ProcessRunner
from tests.backends.rawdisk.support import MIB, FakeDisks, fake_disks, sh

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.kernel]
IN_LANE = os.environ.get("LOCALCSI_VMTEST") == "1"


def kernel_shows_gpt_partitions() -> bool:
    """Write a GPT to a partscan loop device and see whether the kernel makes loopNp1."""
    with tempfile.TemporaryDirectory(prefix="localcsi-gptprobe-") as scratch:
        image = Path(scratch) / "probe.img"
        layout = gpt.Layout(8 * MIB, 512)
        built = gpt.build(layout, type_guid=uuid.uuid4(), name="probe")
        with image.open("wb") as handle:
            handle.truncate(layout.disk_bytes)
            handle.write(built.head)
            handle.seek(built.tail_offset)
            handle.write(built.tail)
        device = sh("losetup", "--find", "--show", "--partscan", str(image)).strip()
        try:
            name = os.path.basename(device)
            return Path(f"/sys/block/{name}/{name}p1").exists()
        finally:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


@pytest.fixture(scope="module", autouse=True)
def _partition_support() -> None:
    if kernel_shows_gpt_partitions():
        return
    message = "this kernel parses no GPT partition tables (CONFIG_EFI_PARTITION off)"
    if IN_LANE:
        pytest.fail(f"kernel lane broken: {message}")
    pytest.skip(f"{message}; run it in the kernel lane: hack/vmtest")


disks = pytest.fixture(fake_disks, name="disks")


async def test_attach_uses_the_kernel_partition_device(disks: FakeDisks) -> None:
    device = disks.add("d", 128 * MIB, partscan=True)
    name = os.path.basename(device)
    payload = os.urandom(64 * 1024)
    backend = RawdiskBackend("node-a", RawdiskOptions(devices=(disks.pattern,)), ProcessRunner(), watch=False)
    await backend.start()
    try:
        volume = await backend.create_volume(VolumeSpec("pvc-k", 64 * MIB, 0, {}, AccessType.MOUNT, "ext4"))
        assert Path(f"/sys/block/{name}/{name}p1").exists()  # BLKRRPART after the claim
        attached = await backend.attach(volume.volume_id, readonly=False)
        assert attached == f"/dev/{name}p1"
        assert int(Path(f"/sys/block/{name}/{name}p1/size").read_text()) * 512 == volume.capacity_bytes
        with open(attached, "r+b") as handle:
            handle.write(payload)
            os.fsync(handle.fileno())
        assert await backend.device_path(volume.volume_id) == attached
        await backend.detach(volume.volume_id)  # nothing to undo for a kernel partition

        await backend.close()
        backend = RawdiskBackend("node-a", RawdiskOptions(devices=(disks.pattern,)), ProcessRunner(), watch=False)
        await backend.start()
        assert [v.volume_id for v in await backend.list_volumes()] == [volume.volume_id]
        assert await backend.device_path(volume.volume_id) == attached
        with open(attached, "rb") as handle:
            assert handle.read(len(payload)) == payload

        sh("mkfs.ext4", "-q", attached)
        point = disks.root / "mnt"
        point.mkdir()
        sh("mount", attached, str(point))
        try:
            with pytest.raises(errors.VolumeInUse):
                await backend.delete_volume(volume.volume_id)
        finally:
            sh("umount", str(point))
        await backend.delete_volume(volume.volume_id)
        assert not Path(f"/sys/block/{name}/{name}p1").exists()
        assert {d.state for d in backend.inventory()} == {State.FREE}
    finally:
        await backend.close()
    with open(disks.images / "d.img", "rb") as image:
        assert image.read(2 * MIB) == bytes(2 * MIB)  # GPT, record and the filesystem's start: all wiped


async def test_clone_and_restore_through_kernel_partitions(disks: FakeDisks) -> None:
    """A mounted source (the kernel's partition device) is frozen and copied; copies mount from their own p1."""
    for name in ("src", "clone", "restored"):
        disks.add(name, 96 * MIB, partscan=True)
    snapshots = disks.root / "snapshots"
    options = RawdiskOptions(devices=(disks.pattern,), snapshot_dir=str(snapshots))
    backend = RawdiskBackend("node-a", options, ProcessRunner(), watch=False)
    await backend.start()
    point = disks.root / "mnt"
    point.mkdir()
    payload = os.urandom(512 * 1024)
    try:
        source = await backend.create_volume(VolumeSpec("pvc-src", 64 * MIB, 0, {}, AccessType.MOUNT, "ext4"))
        device = await backend.attach(source.volume_id, readonly=False)
        assert device.endswith("p1")
        sh("mkfs.ext4", "-q", device)
        sh("mount", device, str(point))
        try:
            (point / "data").write_bytes(payload)
            snap = await backend.create_snapshot(source.volume_id, "snap", {})
            clone_source = ContentSource(SourceKind.VOLUME, source.volume_id)
            clone = await backend.create_volume(
                VolumeSpec("pvc-clone", 0, 0, {}, AccessType.MOUNT, "ext4", clone_source))
            (point / "data").write_bytes(b"changed after both copies")
        finally:
            sh("umount", str(point))
        restored = await backend.create_volume(VolumeSpec("pvc-restored", 0, 0, {}, AccessType.MOUNT, "ext4",
                                                          ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)))
        for copy in (clone, restored):
            copy_device = await backend.attach(copy.volume_id, readonly=False)
            assert copy_device.endswith("p1") and copy_device != device
            sh("mount", copy_device, str(point))
            try:
                assert (point / "data").read_bytes() == payload
            finally:
                sh("umount", str(point))
            await backend.delete_volume(copy.volume_id)
        await backend.delete_snapshot(snap.snapshot_id)
        await backend.delete_volume(source.volume_id)
        assert {d.state for d in backend.inventory()} == {State.FREE}
        assert list(snapshots.iterdir()) == []
    finally:
        await backend.close()
