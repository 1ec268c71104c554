from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from loguru import logger

from backends.errors import InvalidArgument, VolumeInUse
from backends.system import loop
from backends.system import mount as mnt
from tests.backends.system.fixtures import LoopFactory, make_image, run

MIB = 1 << 20


def test_loop_config_layout_matches_the_kernel_struct() -> None:
    assert loop._LOOP_CONFIG.size == 304  # 2 x u32 + loop_info64 (232) + 8 x u64
    packed = loop._pack_config(7, "/x/" + "a" * 100, flags=loop.LO_FLAGS_DIRECT_IO, offset=4096, sizelimit=8192,
                               block_size=512)  # fmt: skip
    assert int.from_bytes(packed[0:4], "little") == 7
    assert int.from_bytes(packed[4:8], "little") == 512
    assert int.from_bytes(packed[8 + 24 : 8 + 32], "little") == 4096  # lo_offset
    assert int.from_bytes(packed[8 + 32 : 8 + 40], "little") == 8192  # lo_sizelimit
    assert int.from_bytes(packed[8 + 52 : 8 + 56], "little") == loop.LO_FLAGS_DIRECT_IO  # lo_flags
    name = packed[8 + 56 : 8 + 56 + 64]
    assert name.startswith(b"/x/aaa") and name[63] == 0


@pytest.mark.parametrize("path", ["/dev/sda", "/dev/loop", "/dev/loop1p1", "loop1", "/dev/loop-control"])
def test_only_loop_device_paths_are_accepted(path: str) -> None:
    with pytest.raises(InvalidArgument):
        loop.loop_number(path)


pytestmark = pytest.mark.anyio


@pytest.mark.root
async def test_attach_with_direct_io_and_read_back(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 64 * MIB, "disk image.img")
    device = await loops(image)
    assert device.path == f"/dev/loop{device.number}"
    assert device.backing_file == str(image)
    assert device.direct_io
    assert not device.readonly
    assert device.size_bytes == 64 * MIB
    assert Path(f"/sys/block/loop{device.number}/loop/autoclear").read_text().strip() == "0"
    payload = os.urandom(4096)
    fd = os.open(device.path, os.O_RDWR)
    try:
        os.pwrite(fd, payload, 1 * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    with image.open("rb") as handle:
        handle.seek(1 * MIB)
        assert handle.read(4096) == payload


@pytest.mark.root
async def test_readonly_attach_refuses_writes(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 16 * MIB)
    device = await loops(image, readonly=True)
    assert device.readonly
    fd = os.open(device.path, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as caught:
            os.pwrite(fd, b"x" * 4096, 0)
    finally:
        os.close(fd)
    assert caught.value.errno in (errno.EROFS, errno.EPERM)
    assert image.read_bytes()[:4096] == bytes(4096)


@pytest.mark.root
async def test_offset_and_sizelimit_expose_a_window(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 16 * MIB)
    with image.open("r+b") as handle:
        handle.seek(4 * MIB)
        handle.write(b"window-start")
    device = await loops(image, offset=4 * MIB, sizelimit=2 * MIB)
    assert (device.offset, device.sizelimit, device.size_bytes) == (4 * MIB, 2 * MIB, 2 * MIB)
    with open(device.path, "rb") as handle:
        assert handle.read(12) == b"window-start"


@pytest.mark.root
async def test_buffered_fallback_when_direct_io_is_impossible(scratch: Path, loops: LoopFactory) -> None:
    """A 512-byte loop block size on a 4 KiB-sector backing device cannot do direct I/O."""
    outer = await loops(make_image(scratch, 128 * MIB, "outer"), block_size=4096)
    run("mkfs.ext4", "-q", "-b", "4096", outer.path)
    (scratch / "m").mkdir()
    await mnt.mount(outer.path, str(scratch / "m"), "ext4")
    inner_image = make_image(scratch / "m", 8 * MIB, "inner")
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        inner = await loops(inner_image, block_size=512)
    finally:
        logger.remove(sink)
    assert not inner.direct_io
    assert any("direct I/O not in effect" in m for m in messages)
    await loop.detach(inner.path)


@pytest.mark.root
async def test_list_and_find_by_backing_file(scratch: Path, loops: LoopFactory) -> None:
    first = await loops(make_image(scratch, 8 * MIB, "a"))
    second = await loops(make_image(scratch, 8 * MIB, "b"), readonly=True)
    listed = {d.path: d for d in await loop.list_attached()}
    assert listed[first.path] == first
    assert listed[second.path] == second
    assert await loop.find_by_backing_file(str(scratch / "b")) == second
    (scratch / "link").symlink_to(scratch / "a")
    assert await loop.find_by_backing_file(str(scratch / "link")) == first
    assert await loop.find_by_backing_file(str(scratch / "none")) is None


@pytest.mark.root
async def test_refresh_capacity_after_the_file_grew(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 32 * MIB)
    device = await loops(image)
    os.truncate(image, 96 * MIB)
    assert await loop.refresh_capacity(device.path) == 96 * MIB
    current = await loop.get_device(device.path)
    assert current is not None and current.size_bytes == 96 * MIB


@pytest.mark.root
async def test_detach_is_idempotent(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 8 * MIB))
    await loop.detach(device.path)
    assert await loop.get_device(device.path) is None
    await loop.detach(device.path)
    await loop.detach("/dev/loop999999")


@pytest.mark.root
async def test_detach_of_a_mounted_device_refuses_and_changes_nothing(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 64 * MIB))
    run("mkfs.ext4", "-q", device.path)
    (scratch / "m").mkdir()
    await mnt.mount(device.path, str(scratch / "m"), "ext4")
    with pytest.raises(VolumeInUse, match="mounted"):
        await loop.detach(device.path)
    assert Path(f"/sys/block/loop{device.number}/loop/autoclear").read_text().strip() == "0"
    await mnt.unmount(str(scratch / "m"))
    await loop.detach(device.path)
    assert await loop.get_device(device.path) is None


@pytest.mark.root
async def test_detach_with_an_open_holder_is_deferred_and_reported(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 8 * MIB))
    holder = os.open(device.path, os.O_RDONLY)
    try:
        with pytest.raises(VolumeInUse, match="still open"):
            await loop.detach(device.path)
        assert await loop.get_device(device.path) is not None
    finally:
        os.close(holder)
    # The kernel completes the detach on the last close; the retry then succeeds quietly.
    await loop.detach(device.path)
    assert await loop.get_device(device.path) is None
