"""loopfile's proof that an image reads as zeros, which lets NodeStage skip its content probe.

Only a definite "no data anywhere" may count: any byte written (through the
file, or through a loop device with direct I/O), even one still in the page
cache, must make it False. Checked on each filesystem an image directory may
live on.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from backends.loopfile.backend import holds_no_data
from tests.backends.system.fixtures import LoopFactory, loops, make_image, run, scratch

__all__ = ["loops", "scratch"]  # fixtures used below

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20


@pytest.fixture(params=["ext4", "xfs", "btrfs"])
async def image_dir(request: pytest.FixtureRequest, scratch: Path, loops: LoopFactory) -> Path:
    """A directory on a fresh ``request.param`` filesystem (an image directory's possible homes)."""
    fs_type = request.param
    device = await loops(make_image(scratch, 320 * MIB, "fs.img"))
    run(f"mkfs.{fs_type}", "-q", *(["-f"] if fs_type in ("xfs", "btrfs") else ["-F"]), device.path)
    mounted = scratch / "dir"
    mounted.mkdir()
    run("mount", "-t", fs_type, device.path, str(mounted))
    return mounted


def sparse(path: Path, size: int = 64 * MIB) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


async def test_sparse_and_preallocated_images_hold_no_data(image_dir: Path) -> None:
    assert holds_no_data(str(sparse(image_dir / "sparse.img")))
    prealloc = image_dir / "prealloc.img"
    fd = os.open(prealloc, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 64 * MIB)  # unwritten extents read as zeros
    finally:
        os.close(fd)
    assert holds_no_data(str(prealloc))


@pytest.mark.parametrize("offset", [0, 4096, 64 * MIB - 4096])
async def test_one_written_block_anywhere_is_data(image_dir: Path, offset: int) -> None:
    image = sparse(image_dir / "written.img")
    with open(image, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * 4095 + b"x")
        os.fsync(handle.fileno())
    assert not holds_no_data(str(image))


async def test_data_still_in_the_page_cache_counts(image_dir: Path) -> None:
    for name, allocate in (("hole.img", False), ("unwritten.img", True)):
        image = sparse(image_dir / name)
        if allocate:
            fd = os.open(image, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, 64 * MIB)
            finally:
                os.close(fd)
        with open(image, "r+b") as handle:
            handle.seek(8 * MIB)
            handle.write(b"page cache only")
            handle.flush()  # written, not fsynced
            assert not holds_no_data(str(image)), name


async def test_a_write_through_a_direct_io_loop_device_is_data(image_dir: Path, loops: LoopFactory) -> None:
    image = sparse(image_dir / "loop.img")
    device = await loops(image, direct_io=True)
    assert holds_no_data(str(image))
    block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    block.write(os.urandom(4096))
    fd = os.open(device.path, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwritev(fd, [block], 32 * MIB)
    finally:
        os.close(fd)
    assert not holds_no_data(str(image))


def test_a_missing_file_is_not_proof(tmp_path: Path) -> None:
    assert not holds_no_data(str(tmp_path / "absent.img"))
