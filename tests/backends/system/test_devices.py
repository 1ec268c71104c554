"""Probe, mkfs, grow and sizes against real loop devices."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

import pytest

from backends.provisioning import MIN_FS_BYTES
from backends.system import blkid, fs, loop, mkfs, stats
from backends.system import mount as mnt
from backends.system.errors import CommandError, SyscallError
from backends.system.runner import ProcessRunner
from tests.backends.system.fixtures import CAP_SYS_RESOURCE, LoopFactory, has_capability, make_image, run

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20
RUNNER = ProcessRunner()


def write_gpt(path: str, size: int) -> None:
    """A protective MBR plus a GPT header, written by hand so no partitioning tool is needed."""
    import struct
    import zlib

    sectors = size // 512
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, min(sectors - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    entries = bytes(128 * 128)
    header = bytearray(
        struct.pack(
            "<8sIIIIQQQQ16sQIII",
            b"EFI PART", 0x00010000, 92, 0, 0, 1, sectors - 1, 34, sectors - 34,
            uuid.uuid4().bytes_le, 2, 128, 128, zlib.crc32(entries),
        )
    )  # fmt: skip
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    with open(path, "r+b") as handle:
        handle.write(bytes(mbr))
        handle.write(bytes(header).ljust(512, b"\0"))
        handle.write(entries)


async def test_probe_blank_formatted_and_partitioned(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 64 * MIB))
    assert (await blkid.probe(RUNNER, device.path)).blank
    await mkfs.make_filesystem(RUNNER, device.path, "ext4")
    found = await blkid.probe(RUNNER, device.path)
    assert (found.blank, found.fs_type, found.usage) == (False, "ext4", "filesystem")
    run("wipefs", "-q", "-a", device.path)
    assert (await blkid.probe(RUNNER, device.path)).blank
    write_gpt(device.path, 64 * MIB)
    found = await blkid.probe(RUNNER, device.path)
    assert not found.blank and found.pt_type == "gpt"


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="sgdisk (gdisk package) not installed")
async def test_probe_sees_a_gpt_written_by_sgdisk(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 64 * MIB))
    run("sgdisk", "-n", "1:0:+8M", device.path)
    found = await blkid.probe(RUNNER, device.path)
    assert not found.blank and found.pt_type == "gpt"


async def test_probe_of_overlapping_signatures_is_ambiguous(scratch: Path, loops: LoopFactory) -> None:
    xfs_image = make_image(scratch, 300 * MIB, "x")
    run("mkfs.xfs", "-q", str(xfs_image))
    device = await loops(make_image(scratch, 300 * MIB))
    run("mkfs.ext4", "-q", device.path)
    with open(device.path, "r+b") as handle:
        handle.write(xfs_image.read_bytes()[:512])
    found = await blkid.probe(RUNNER, device.path)
    assert found.ambiguous and not found.blank


@pytest.mark.parametrize("fs_type", mkfs.available_fs_types())
async def test_make_filesystem_then_mount_write_read(fs_type: str, scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 320 * MIB))
    await mkfs.make_filesystem(RUNNER, device.path, fs_type)
    target = scratch / "m"
    target.mkdir()
    await mnt.mount(device.path, str(target), fs_type)
    (target / "file").write_bytes(b"payload" * 1000)
    assert await mnt.unmount(str(target))
    await mnt.mount(device.path, str(target), fs_type, readonly=True)
    assert (target / "file").read_bytes() == b"payload" * 1000


async def test_stats_of_a_device_and_its_filesystem(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 128 * MIB))
    assert await stats.block_device_size(device.path) == 128 * MIB
    assert await stats.block_size(device.path) in (512, 4096)
    assert await stats.physical_block_size(device.path) >= await stats.block_size(device.path)
    await mkfs.make_filesystem(RUNNER, device.path, "ext4")
    await mnt.mount(device.path, str(scratch), "ext4")
    before = await stats.filesystem_stats(str(scratch))
    assert 100 * MIB < before.total_bytes <= 128 * MIB
    assert before.used_bytes + before.available_bytes <= before.total_bytes
    assert before.total_inodes == before.free_inodes + before.used_inodes
    (scratch / "blob").write_bytes(os.urandom(8 * MIB))
    os.sync()
    after = await stats.filesystem_stats(str(scratch))
    assert after.used_bytes - before.used_bytes >= 8 * MIB
    assert after.used_inodes == before.used_inodes + 1


async def test_stats_of_a_missing_path_is_a_syscall_error(scratch: Path) -> None:
    with pytest.raises(SyscallError) as caught:
        await stats.filesystem_stats(str(scratch / "missing"))
    assert caught.value.errno == errno.ENOENT


async def mounted_image(scratch: Path, loops: LoopFactory, fs_type: str, size: int) -> tuple[Path, str, Path]:
    """An image of ``size`` bytes on a loop device, formatted with ``fs_type`` and mounted: (image, device, mount)."""
    image = make_image(scratch, size)
    device = await loops(image)
    await mkfs.make_filesystem(RUNNER, device.path, fs_type)
    target = scratch / "m"
    target.mkdir()
    await mnt.mount(device.path, str(target), fs_type)
    return image, device.path, target


async def test_grow_mounted_xfs_online_after_the_image_grew(scratch: Path, loops: LoopFactory) -> None:
    image, device_path, target = await mounted_image(scratch, loops, "xfs", 320 * MIB)
    (target / "keep").write_text("kept")
    before = await stats.filesystem_stats(str(target))
    assert not await fs.grow_filesystem(RUNNER, device_path, str(target), "xfs")  # already full size
    os.truncate(image, 640 * MIB)
    assert await loop.refresh_capacity(device_path) == 640 * MIB
    assert await fs.grow_filesystem(RUNNER, device_path, str(target), "xfs")
    after = await stats.filesystem_stats(str(target))
    assert after.total_bytes > before.total_bytes + 300 * MIB
    assert (target / "keep").read_text() == "kept"


async def test_grow_mounted_btrfs(scratch: Path, loops: LoopFactory) -> None:
    if "btrfs" not in mkfs.available_fs_types():
        pytest.skip("mkfs.btrfs not installed")
    image, device_path, target = await mounted_image(scratch, loops, "btrfs", 320 * MIB)
    before = await stats.filesystem_stats(str(target))
    os.truncate(image, 640 * MIB)
    await loop.refresh_capacity(device_path)
    assert await fs.grow_filesystem(RUNNER, device_path, str(target), "btrfs")
    assert (await stats.filesystem_stats(str(target))).total_bytes > before.total_bytes + 250 * MIB


async def _grown_ext4(scratch: Path, loops: LoopFactory) -> tuple[str, Path]:
    image, device_path, target = await mounted_image(scratch, loops, "ext4", 128 * MIB)
    os.truncate(image, 256 * MIB)
    await loop.refresh_capacity(device_path)
    return device_path, target


@pytest.mark.skipif(has_capability(CAP_SYS_RESOURCE), reason="this process has CAP_SYS_RESOURCE")
async def test_ext4_online_grow_without_cap_sys_resource_names_it(scratch: Path, loops: LoopFactory) -> None:
    device, target = await _grown_ext4(scratch, loops)
    with pytest.raises(SyscallError) as caught:
        await fs.grow_filesystem(RUNNER, device, str(target), "ext4")
    assert caught.value.errno == errno.EPERM
    assert "CAP_SYS_RESOURCE" in str(caught.value)


@pytest.mark.kernel
@pytest.mark.skipif(not has_capability(CAP_SYS_RESOURCE), reason="ext4 online resize needs CAP_SYS_RESOURCE")
async def test_ext4_online_grow(scratch: Path, loops: LoopFactory) -> None:
    device, target = await _grown_ext4(scratch, loops)
    before = await stats.filesystem_stats(str(target))
    assert await fs.grow_filesystem(RUNNER, device, str(target), "ext4")
    assert (await stats.filesystem_stats(str(target))).total_bytes > before.total_bytes + 100 * MIB


async def test_grow_of_an_unsupported_type_is_invalid(scratch: Path) -> None:
    from backends.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        await fs.grow_filesystem(RUNNER, "/dev/null", str(scratch), "vfat")


@pytest.mark.parametrize("fs_type", mkfs.available_fs_types())
async def test_minimum_sizes_are_exact(fs_type: str, scratch: Path, loops: LoopFactory) -> None:
    """The one minimum-size table is what each mkfs needs: at the minimum a whole filesystem (ext4 with its
    journal), one MiB below it none (xfs, btrfs refuse; ext4 leaves out the journal)."""
    minimum = MIN_FS_BYTES[fs_type]
    just_enough = await loops(make_image(scratch, minimum, "min"))
    await mkfs.make_filesystem(RUNNER, just_enough.path, fs_type)
    too_small = await loops(make_image(scratch, minimum - (1 << 20), "small"))
    if fs_type == "ext4":
        assert "has_journal" in run("dumpe2fs", "-h", just_enough.path)
        await mkfs.make_filesystem(RUNNER, too_small.path, fs_type)
        assert "has_journal" not in run("dumpe2fs", "-h", too_small.path)
    else:
        with pytest.raises(CommandError):
            await mkfs.make_filesystem(RUNNER, too_small.path, fs_type)
