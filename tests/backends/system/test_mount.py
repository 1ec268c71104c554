from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from backends.errors import InvalidArgument, VolumeInUse
from backends.system import mount as mnt
from backends.system.errors import SyscallError
from tests.backends.system.fixtures import LoopFactory, make_image, run

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20


async def _ext4(scratch: Path, loops: LoopFactory) -> str:
    device = await loops(make_image(scratch, 64 * MIB))
    run("mkfs.ext4", "-q", device.path)
    return device.path


async def test_mount_with_options_and_find_it_at_a_path_with_spaces(scratch: Path, loops: LoopFactory) -> None:
    device = await _ext4(scratch, loops)
    target = scratch / "staging dir\twith tab"
    target.mkdir()
    await mnt.mount(device, str(target), "ext4", options=["noatime,nosuid", "discard"])
    entry = await mnt.find_mount(str(target))
    assert entry is not None
    assert entry.source == device and entry.fs_type == "ext4" and entry.root == "/"
    assert {"noatime", "nosuid"} <= set(entry.options)
    assert "discard" in entry.super_options
    st = os.stat(device)
    assert entry.major_minor == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    assert not entry.readonly
    (target / "f").write_text("data")
    assert await mnt.unmount(str(target))
    assert await mnt.find_mount(str(target)) is None


async def test_readonly_mount(scratch: Path, loops: LoopFactory) -> None:
    device = await _ext4(scratch, loops)
    await mnt.mount(device, str(scratch), "ext4", readonly=True)
    entry = await mnt.find_mount(str(scratch))
    assert entry is not None and entry.readonly
    with pytest.raises(OSError) as caught:
        (scratch / "f").write_text("x")
    assert caught.value.errno == errno.EROFS


async def test_wrong_filesystem_type_is_a_syscall_error(scratch: Path, loops: LoopFactory) -> None:
    device = await _ext4(scratch, loops)
    with pytest.raises(SyscallError) as caught:
        await mnt.mount(device, str(scratch), "xfs")
    assert caught.value.errno == errno.EINVAL
    assert await mnt.find_mount(str(scratch)) is None


async def test_forbidden_option_never_reaches_the_kernel(scratch: Path, loops: LoopFactory) -> None:
    device = await _ext4(scratch, loops)
    with pytest.raises(InvalidArgument):
        await mnt.mount(device, str(scratch), "ext4", options=["rbind"])
    assert await mnt.find_mount(str(scratch)) is None


async def _staged(scratch: Path, loops: LoopFactory) -> tuple[Path, Path]:
    """An ext4 filesystem mounted at ``staging``, and an empty ``publish`` directory beside it."""
    device = await _ext4(scratch, loops)
    staging = scratch / "staging"
    publish = scratch / "publish"
    staging.mkdir()
    publish.mkdir()
    await mnt.mount(device, str(staging), "ext4")
    return staging, publish


async def test_bind_mount_read_only_leaves_the_source_writable(scratch: Path, loops: LoopFactory) -> None:
    staging, publish = await _staged(scratch, loops)
    (staging / "hello").write_text("world")
    await mnt.bind_mount(str(staging), str(publish), readonly=True, options=["noexec"])
    entry = await mnt.find_mount(str(publish))
    assert entry is not None and entry.readonly and "noexec" in entry.options
    assert (publish / "hello").read_text() == "world"
    with pytest.raises(OSError) as caught:
        (publish / "new").write_text("x")
    assert caught.value.errno == errno.EROFS
    (staging / "still-rw").write_text("ok")
    staging_entry = await mnt.find_mount(str(staging))
    assert staging_entry is not None and not staging_entry.readonly


async def test_bind_mount_read_write(scratch: Path, loops: LoopFactory) -> None:
    staging, publish = await _staged(scratch, loops)
    await mnt.bind_mount(str(staging), str(publish))
    (publish / "from-publish").write_text("x")
    assert (staging / "from-publish").read_text() == "x"


async def test_bind_mount_of_a_device_node_onto_a_file(scratch: Path, loops: LoopFactory) -> None:
    device = await loops(make_image(scratch, 8 * MIB))
    target = scratch / "block"
    target.touch()
    await mnt.bind_mount(device.path, str(target), readonly=False)
    assert os.stat(target).st_rdev == os.stat(device.path).st_rdev
    fd = os.open(target, os.O_RDWR)
    try:
        os.pwrite(fd, b"through the bind", 0)
    finally:
        os.close(fd)
    with open(device.path, "rb") as handle:
        assert handle.read(16) == b"through the bind"


async def test_bind_mount_refuses_filesystem_data_options(scratch: Path) -> None:
    with pytest.raises(InvalidArgument):
        await mnt.bind_mount(str(scratch), str(scratch), options=["discard"])


async def test_unmount_when_nothing_is_mounted(scratch: Path) -> None:
    assert not await mnt.unmount(str(scratch))
    assert not await mnt.unmount(str(scratch / "missing"))


async def test_unmount_of_a_busy_mount_is_volume_in_use(scratch: Path, loops: LoopFactory) -> None:
    device = await _ext4(scratch, loops)
    await mnt.mount(device, str(scratch), "ext4")
    handle = (scratch / "open").open("w")
    try:
        with pytest.raises(VolumeInUse, match="busy"):
            await mnt.unmount(str(scratch))
        assert await mnt.find_mount(str(scratch)) is not None
    finally:
        handle.close()
    assert await mnt.unmount(str(scratch))


async def test_stacked_mounts_topmost_and_unmount_order(scratch: Path) -> None:
    await mnt.mount("lower", str(scratch), "tmpfs", options=["size=1m"])
    await mnt.mount("upper", str(scratch), "tmpfs", options=["size=1m"], readonly=True)
    top = await mnt.find_mount(str(scratch))
    assert top is not None and top.source == "upper"
    assert len(mnt.stacked(await mnt.mounts(), str(scratch))) == 2
    assert await mnt.unmount(str(scratch))
    top = await mnt.find_mount(str(scratch))
    assert top is not None and top.source == "lower"
    assert await mnt.unmount(str(scratch))
    assert not await mnt.unmount(str(scratch))


async def test_path_state_sees_mount_points_and_read_only(scratch: Path, loops: LoopFactory) -> None:
    target = scratch / "t"
    target.mkdir()
    before = await mnt.path_state(str(target))
    assert before.exists and before.is_dir and not before.mount_point
    device = await _ext4(scratch, loops)
    await mnt.mount(device, str(target), "ext4", readonly=True)
    after = await mnt.path_state(str(target))
    assert after.mount_point and after.readonly
    assert after.dev == os.stat(device).st_rdev
    assert not (await mnt.path_state(str(scratch / "missing"))).exists
