"""backends.nodeops: the converge-to-state steps, with a fake runner and on real devices."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from backends import nodeops, paths
from backends.errors import AlreadyExists, DeviceNotBlank, InvalidArgument, PreconditionFailed, VolumeInUse
from backends.system import loop, mkfs, stats
from backends.system import mount as mnt
from backends.system.errors import CommandError
from backends.system.runner import ProcessRunner, Result
from backends.system.testing import FakeRunner
from tests.backends.system.fixtures import DATA, LoopFactory, loops, make_image, run, scratch

__all__ = ["loops", "scratch"]  # fixtures used below

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20
RUNNER = ProcessRunner()


# ------------------------------------------------------------- fake runner


def golden_runner(case: str) -> FakeRunner:
    """blkid answers from a recorded run; any other command 'succeeds' and is recorded."""
    golden = DATA / "blkid"
    code = int((golden / f"{case}.rc").read_text())
    out = (golden / f"{case}.stdout").read_text()
    err = (golden / f"{case}.stderr").read_text()

    def handler(argv: tuple[str, ...]) -> Result | tuple[int, str, str]:
        if argv[0] == "blkid":
            return Result(argv, code, out, err, 0.0)
        return (0, "", "")

    return FakeRunner(handler)


@pytest.fixture
def block_node(scratch: Path) -> str:
    """A block device node nothing will ever read (the fake runner answers for it)."""
    path = scratch / "fake-disk"
    os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 1048575))
    return str(path)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("ext4", "ext4 (filesystem)"),
        ("btrfs", "btrfs"),
        ("swap", "swap"),
        ("lvm2_member", "LVM2_member"),
        ("gpt", "gpt partition table"),
        ("dos", "dos partition table"),
        ("ambivalent", "ambiguous"),
    ],
)
async def test_never_formats_a_device_that_is_not_clearly_blank(block_node: str, case: str, words: str) -> None:
    runner = golden_runner(case)
    with pytest.raises(DeviceNotBlank) as caught:
        await nodeops.ensure_formatted(runner, block_node, "xfs")
    assert words in str(caught.value) and block_node in str(caught.value)
    assert [argv[0] for argv in runner.calls] == ["blkid"]


async def test_probe_failure_is_an_error_and_no_mkfs(block_node: str) -> None:
    runner = golden_runner("error_eperm")
    with pytest.raises(CommandError):
        await nodeops.ensure_formatted(runner, block_node, "ext4")
    assert [argv[0] for argv in runner.calls] == ["blkid"]


async def test_blank_device_is_formatted(block_node: str) -> None:
    runner = golden_runner("blank")
    assert await nodeops.ensure_formatted(runner, block_node, "xfs", mkfs_options=["-L", "vol"])
    assert runner.calls[1] == ("mkfs.xfs", "-q", "-K", "-L", "vol", block_node)


async def test_a_blank_probe_of_a_device_known_to_hold_data_is_no_licence_to_format(block_node: str) -> None:
    runner = golden_runner("blank")  # raw data carries no signature: blkid finds nothing
    with pytest.raises(DeviceNotBlank, match="held data"):
        await nodeops.ensure_formatted(runner, block_node, "ext4", holds_data=True)
    assert [argv[0] for argv in runner.calls] == ["blkid"]
    ours = golden_runner("ext4")  # our own filesystem on it is still found and kept
    assert not await nodeops.ensure_formatted(ours, block_node, "ext4", holds_data=True)


async def test_same_filesystem_is_left_alone(block_node: str) -> None:
    runner = golden_runner("ext4")
    assert not await nodeops.ensure_formatted(runner, block_node, "ext4")
    assert len(runner.calls) == 1


async def test_missing_or_non_block_device_is_refused_before_probing(scratch: Path) -> None:
    runner = golden_runner("missing")
    with pytest.raises(InvalidArgument, match="does not exist"):
        await nodeops.ensure_formatted(runner, str(scratch / "nope"), "ext4")
    (scratch / "file").touch()
    with pytest.raises(InvalidArgument, match="not a block device"):
        await nodeops.ensure_formatted(runner, str(scratch / "file"), "ext4")
    with pytest.raises(InvalidArgument, match="unsupported filesystem"):
        await nodeops.ensure_formatted(runner, str(scratch / "file"), "ntfs")
    assert runner.calls == []


# ------------------------------------------------------------ real devices


async def _device(scratch: Path, loops: LoopFactory, size: int = 64 * MIB, name: str = "image") -> str:
    return (await loops(make_image(scratch, size, name))).path


async def test_ensure_formatted_on_real_devices(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    assert await nodeops.ensure_formatted(RUNNER, device, "ext4")
    assert not await nodeops.ensure_formatted(RUNNER, device, "ext4")
    with pytest.raises(DeviceNotBlank, match="ext4"):
        await nodeops.ensure_formatted(RUNNER, device, "xfs")
    other = await _device(scratch, loops, name="gpt")
    run("sgdisk", "-n", "1:0:+8M", other)
    with pytest.raises(DeviceNotBlank, match="gpt partition table"):
        await nodeops.ensure_formatted(RUNNER, other, "ext4")


async def test_ensure_mounted_is_idempotent_and_detects_conflicts(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    await nodeops.ensure_formatted(RUNNER, device, "ext4")
    target = scratch / "staging" / "global mount"
    await nodeops.ensure_mounted(device, str(target), "ext4", options=["noatime"])
    await nodeops.ensure_mounted(device, str(target), "ext4", options=["noatime"])
    assert len(mnt.stacked(await mnt.mounts(), str(target))) == 1
    with pytest.raises(AlreadyExists, match="read-write"):
        await nodeops.ensure_mounted(device, str(target), "ext4", readonly=True)
    other = await _device(scratch, loops, name="other")
    await nodeops.ensure_formatted(RUNNER, other, "ext4")
    with pytest.raises(VolumeInUse, match=device):
        await nodeops.ensure_mounted(other, str(target), "ext4")
    (scratch / "a-file").touch()
    with pytest.raises(InvalidArgument):
        await nodeops.ensure_mounted(other, str(scratch / "a-file"), "ext4")


async def test_ensure_mounted_read_only(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops, size=320 * MIB)  # xfs needs 300 MiB
    await nodeops.ensure_formatted(RUNNER, device, "xfs")
    target = scratch / "ro"
    await nodeops.ensure_mounted(device, str(target), "xfs", readonly=True)
    await nodeops.ensure_mounted(device, str(target), "xfs", readonly=True)
    with pytest.raises(AlreadyExists, match="read-only"):
        await nodeops.ensure_mounted(device, str(target), "xfs")


async def test_ensure_mounted_btrfs_anonymous_device_numbers(scratch: Path, loops: LoopFactory) -> None:
    if "btrfs" not in mkfs.available_fs_types():
        pytest.skip("mkfs.btrfs not installed")
    device = await _device(scratch, loops, size=320 * MIB)
    await nodeops.ensure_formatted(RUNNER, device, "btrfs")
    target = scratch / "b"
    await nodeops.ensure_mounted(device, str(target), "btrfs")
    await nodeops.ensure_mounted(device, str(target), "btrfs")
    assert len(mnt.stacked(await mnt.mounts(), str(target))) == 1


async def test_ensure_bind_mounted_filesystem(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    await nodeops.ensure_formatted(RUNNER, device, "ext4")
    staging = scratch / "staging"
    await nodeops.ensure_mounted(device, str(staging), "ext4")
    rw_target = scratch / "pods" / "a" / "mount"
    ro_target = scratch / "pods" / "b" / "mount"
    await nodeops.ensure_bind_mounted(str(staging), str(rw_target))
    await nodeops.ensure_bind_mounted(str(staging), str(rw_target))
    await nodeops.ensure_bind_mounted(str(staging), str(ro_target), readonly=True, options=["nosuid"])
    await nodeops.ensure_bind_mounted(str(staging), str(ro_target), readonly=True)
    (rw_target / "written").write_text("back")
    assert (ro_target / "written").read_text() == "back"
    with pytest.raises(OSError) as caught:
        (ro_target / "x").write_text("no")
    assert caught.value.errno == errno.EROFS
    with pytest.raises(AlreadyExists, match="read-only"):
        await nodeops.ensure_bind_mounted(str(staging), str(ro_target))
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(VolumeInUse, match=f"already has {device} "):
        await nodeops.ensure_bind_mounted(str(elsewhere), str(rw_target))
    assert len(mnt.stacked(await mnt.mounts(), str(rw_target))) == 1


async def test_ensure_bind_mounted_block_device_onto_a_file(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    with open(device, "r+b") as handle:
        handle.write(b"raw block data")
    target = scratch / "pods" / "c" / "volumeDevices" / "dev"
    await nodeops.ensure_bind_mounted(device, str(target), block=True)
    await nodeops.ensure_bind_mounted(device, str(target), block=True)
    assert stat.S_ISBLK(os.stat(target).st_mode)
    with open(target, "rb") as handle:
        assert handle.read(14) == b"raw block data"
    other = await _device(scratch, loops, name="other")
    with pytest.raises(VolumeInUse):
        await nodeops.ensure_bind_mounted(other, str(target), block=True)
    with pytest.raises(InvalidArgument):
        await nodeops.ensure_bind_mounted(str(scratch), str(scratch / "t"), block=True)
    await mnt.clear_target(str(target))
    assert not target.exists()


async def test_clear_target_unstacks_everything_and_removes(scratch: Path) -> None:
    target = scratch / "t"
    target.mkdir()
    for source in ("one", "two", "three"):
        await mnt.mount(source, str(target), "tmpfs", options=["size=1m"])
    await mnt.clear_target(str(target))
    assert not target.exists()
    assert mnt.stacked(await mnt.mounts(), str(target)) == []
    await mnt.clear_target(str(target))  # already gone


async def test_clear_target_keeps_target_when_asked(scratch: Path) -> None:
    target = scratch / "keep"
    target.mkdir()
    await mnt.mount("tmp", str(target), "tmpfs", options=["size=1m"])
    await mnt.clear_target(str(target), remove=False)
    assert target.is_dir()
    assert await mnt.find_mount(str(target)) is None


async def test_clear_target_refuses_to_delete_data(scratch: Path) -> None:
    target = scratch / "full"
    target.mkdir()
    (target / "data").write_text("not ours to delete")
    with pytest.raises(PreconditionFailed, match="cannot remove"):
        await mnt.clear_target(str(target))
    assert (target / "data").exists()


async def test_clear_target_busy_is_volume_in_use(scratch: Path) -> None:
    target = scratch / "busy"
    target.mkdir()
    await mnt.mount("tmp", str(target), "tmpfs", options=["size=1m"])
    handle = (target / "open").open("w")
    try:
        with pytest.raises(VolumeInUse):
            await mnt.clear_target(str(target))
    finally:
        handle.close()
    await mnt.clear_target(str(target))


async def test_ensure_filesystem_grown(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 320 * MIB)
    device = (await loops(image)).path
    await nodeops.ensure_formatted(RUNNER, device, "xfs")
    target = scratch / "m"
    with pytest.raises(PreconditionFailed, match="not a mounted"):
        await nodeops.ensure_filesystem_grown(RUNNER, device, str(target), "xfs")
    await nodeops.ensure_mounted(device, str(target), "xfs")
    before = await stats.filesystem_stats(str(target))
    os.truncate(image, 640 * MIB)
    await loop.refresh_capacity(device)
    assert await nodeops.ensure_filesystem_grown(RUNNER, device, str(target), "xfs")
    assert not await nodeops.ensure_filesystem_grown(RUNNER, device, str(target), "xfs")
    assert (await stats.filesystem_stats(str(target))).total_bytes > before.total_bytes + 300 * MIB


async def test_a_bind_of_a_device_reached_through_a_link_counts_as_a_user(scratch: Path, loops: LoopFactory) -> None:
    """lvm hands out /dev/<vg>/<lv>, a link to /dev/dm-N: binds of it must still be seen (single-writer, detach)."""
    device = await _device(scratch, loops)
    link_dir = Path("/dev") / f"localcsi-test-{os.getpid()}"
    link_dir.mkdir()
    link = link_dir / "volume"
    link.symlink_to(os.path.relpath(device, link_dir))
    target = scratch / "pods" / "c" / "dev"
    try:
        await nodeops.ensure_bind_mounted(str(link), str(target), block=True)
        assert await paths.device_in_use(str(link)) == [str(target)]
        assert await paths.device_in_use(device) == [str(target)]
        assert await paths.filesystem_mounts(str(link)) == []
    finally:
        await mnt.clear_target(str(target))
        link.unlink()
        link_dir.rmdir()
    assert await paths.device_in_use(str(link)) == []
