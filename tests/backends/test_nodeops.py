"""The node-side rule (backends/nodeops.py), attacked through a real ``localcsi serve`` over its unix socket.

Before unmounting, removing, binding from, growing or formatting anything at a path, the driver proves that what is
there is the volume's own and that the path lies strictly below its kubelet directory. An id it never issued is
NOT_FOUND and touches nothing; a path that holds something else is FAILED_PRECONDITION and touches nothing. Each test
is one way issue 15 found the driver trusting a request; each failed before the rule existed.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Awaitable, Iterator

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e.leaks import loops_backed_under, mounts_under
from tests.lifecycle import expect as expect_error
from tests.nodepaths import (
    UNKNOWN_ID,
    Volume,
    assert_foreign_intact,
    foreign_tmpfs,
    is_mount_point,
    kubelet_driver,
)
from tests.support import MIB, DriverProcess, block_cap, connect, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
Mode = csi.VolumeCapabilityAccessModeMode
FP, NF, IA = Status.FAILED_PRECONDITION, Status.NOT_FOUND, Status.INVALID_ARGUMENT
THIN = {"loopfile.localcsi.dev/provisioning": "thin"}


@pytest.fixture
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    with kubelet_driver(tmp_path_factory.mktemp("nodeops")).running() as proc:
        yield proc


async def expect(status: Status, call: Awaitable[object]) -> str:
    """The message of the error ``call`` must fail with."""
    return (await expect_error(status, call)).message or ""


def assert_nothing_left(driver: DriverProcess) -> None:
    assert mounts_under(driver.root) == []
    assert loops_backed_under(driver.data_dir) == []


# ---- 1: the block bind file lives where no workload can own a file of that name ---------------------------------


async def test_a_pod_file_named_device_survives_unstage(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-device-file", mount_cap()).up()
        vol.write(b"the pod's own file", name="device")
        await vol.unpublish()
        await vol.unstage()
        await vol.stage()
        await vol.publish()
        assert vol.read(64, name="device") == b"the pod's own file"
        await vol.down()
    assert_nothing_left(driver)


async def test_a_device_directory_in_the_volume_never_blocks_unstage(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-device-dir", mount_cap()).up()
        (vol.target / "device").mkdir()
        (vol.target / "device" / "inside").write_bytes(b"kept")
        await vol.unpublish()
        await vol.unstage()
        await vol.stage()
        await vol.publish()
        assert (vol.target / "device" / "inside").read_bytes() == b"kept"
        await vol.down()
    assert_nothing_left(driver)


async def test_a_staged_block_volume_keeps_its_device_out_of_the_staging_directory(driver: DriverProcess) -> None:
    """Nothing the driver binds lives in the kubelet's staging directory, and the stage survives a restart."""
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-block-stage", block_cap()).up()
        vol.write(b"raw bytes")
        assert not any(stat.S_ISBLK(p.lstat().st_mode) for p in vol.staging.iterdir())
        with pytest.raises(OSError):  # the staging directory is the driver's, read-only, not a place to write
            (vol.staging / "device").write_bytes(b"x")
    driver.kill9()
    driver.start()
    async with connect(driver.socket_path) as c:
        vol.c = c
        other = vol.target.parent / "again"
        await vol.publish(other)
        fd = os.open(other, os.O_RDONLY)
        try:
            assert os.pread(fd, 9, 4096) == b"raw bytes"
        finally:
            os.close(fd)
        await vol.unpublish(other)
        await vol.down()
    assert_nothing_left(driver)


# ---- 6: an id the driver never issued touches nothing; another volume's path is not ours -------------------------


async def test_unpublish_and_unstage_of_an_unknown_id_leave_a_foreign_mount_alone(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        with foreign_tmpfs(driver.kubelet_dir / "pods" / "x" / "mount") as foreign:
            await expect(NF, c.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
                volume_id=UNKNOWN_ID, target_path=str(foreign))))
            assert_foreign_intact(foreign)
            await expect(NF, c.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
                volume_id=UNKNOWN_ID, staging_target_path=str(foreign))))
            assert_foreign_intact(foreign)
            known = await Volume(c, driver, "pvc-known", mount_cap()).create()
            message = await expect(FP, known.unpublish(foreign))
            assert "tmpfs" in message
            await expect(FP, known.unstage(foreign))
            assert_foreign_intact(foreign)


async def test_unstage_naming_another_volumes_staging_path_leaves_it_mounted(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        b = await Volume(c, driver, "pvc-b", mount_cap()).up()
        b.write(b"b's data")
        await expect(NF, c.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
            volume_id=UNKNOWN_ID, staging_target_path=str(b.staging))))
        a = await Volume(c, driver, "pvc-a", mount_cap()).create()
        message = await expect(FP, a.unstage(b.staging))
        assert b.volume_id in message or "ext4" in message
        await expect(FP, a.unpublish(b.target))
        assert is_mount_point(b.staging) and is_mount_point(b.target)
        assert b.read(8) == b"b's data"
        await b.down()


# ---- 7: publish binds from the volume's own staging mount only --------------------------------------------------


@pytest.mark.parametrize("cap", [mount_cap(), block_cap()], ids=["mount", "block"])
async def test_publish_from_another_volumes_staging_path_is_refused(driver: DriverProcess,
                                                                    cap: csi.VolumeCapability) -> None:
    async with connect(driver.socket_path) as c:
        a = await Volume(c, driver, "pvc-a", cap).create()
        await a.stage()
        b = await Volume(c, driver, "pvc-b", cap).up()
        b.write(b"b's secret")
        a.target.parent.mkdir(parents=True)
        await expect(FP, c.node.node_publish_volume(a.publish_request(staging=b.staging)))
        assert not a.target.exists()
        with foreign_tmpfs(driver.kubelet_dir / "plugins" / "x" / "globalmount") as foreign:
            await expect(FP, c.node.node_publish_volume(a.publish_request(staging=foreign)))
            assert not a.target.exists()
            assert_foreign_intact(foreign)
        await b.down()
        await a.unstage()


# ---- 8: strictly below the kubelet directory ----------------------------------------------------------------------


async def test_the_kubelet_directory_itself_is_never_a_staging_or_target_path(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-root", mount_cap()).create()
        await expect(IA, c.node.node_stage_volume(vol.stage_request(driver.kubelet_dir)))
        await vol.stage()
        await expect(IA, c.node.node_publish_volume(vol.publish_request(target=driver.kubelet_dir)))
        await expect(IA, c.node.node_publish_volume(vol.publish_request(target=str(driver.kubelet_dir) + "/")))
        assert mounts_under(driver.kubelet_dir) == [str(vol.staging)]
        await vol.unstage()


# ---- 9: NodeExpandVolume grows the volume it names only ---------------------------------------------------------


async def test_node_expand_naming_another_volumes_path_grows_nothing(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        a = await Volume(c, driver, "pvc-grow-a", mount_cap("xfs"), 320 * MIB, THIN).up()
        b = await Volume(c, driver, "pvc-grow-b", mount_cap("xfs"), 320 * MIB, THIN).up()
        bigger = csi.CapacityRange(required_bytes=640 * MIB)
        for vol in (a, b):
            await c.controller.controller_expand_volume(csi.ControllerExpandVolumeRequest(
                volume_id=vol.volume_id, capacity_range=bigger))
        before = os.statvfs(b.target).f_blocks
        for path in (b.staging, b.target):
            message = await expect(FP, c.node.node_expand_volume(csi.NodeExpandVolumeRequest(
                volume_id=a.volume_id, volume_path=str(path), capacity_range=bigger)))
            assert "xfs" in message
        assert os.statvfs(b.target).f_blocks == before
        await a.down()
        await b.down()


# ---- 10: a stage onto a foreign mount creates nothing -----------------------------------------------------------


@pytest.mark.parametrize("cap", [mount_cap(), block_cap()], ids=["mount", "block"])
async def test_a_stage_onto_a_foreign_mount_creates_nothing(driver: DriverProcess, cap: csi.VolumeCapability) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-onto-foreign", cap).create()
        with foreign_tmpfs(vol.staging) as foreign:
            message = await expect(FP, c.node.node_stage_volume(vol.stage_request()))
            assert "tmpfs" in message
            assert sorted(p.name for p in foreign.iterdir()) == ["precious"]
            assert_foreign_intact(foreign)
            assert loops_backed_under(driver.data_dir) == []
            await expect(FP, vol.unstage())  # and unstage keeps its hands off it too
            assert_foreign_intact(foreign)
        await vol.stage()  # once the path is free the volume stages as usual
        await vol.unstage()
    assert_nothing_left(driver)


# ---- 11: unstage while published changes nothing ----------------------------------------------------------------


@pytest.mark.parametrize("cap", [mount_cap(), block_cap()], ids=["mount", "block"])
async def test_unstage_while_published_is_refused_and_changes_nothing(driver: DriverProcess,
                                                                      cap: csi.VolumeCapability) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-still-published", cap).up()
        vol.write(b"in use")
        before = mounts_under(driver.root)
        message = await expect(FP, vol.unstage())
        assert f"still published at {vol.target}" in message
        assert mounts_under(driver.root) == before
        assert vol.read(6) == b"in use"
        second = vol.target.parent / "second"
        await vol.publish(second)  # still staged: publishing goes on working
        await vol.unpublish(second)
        await vol.down()
    assert_nothing_left(driver)


# ---- 12: publish never hides a directory's content; unpublish of our own bind always finishes -------------------


async def test_publish_over_a_non_empty_directory_is_refused(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-over-content", mount_cap()).create()
        await vol.stage()
        vol.target.mkdir(parents=True)
        (vol.target / "kept").write_bytes(b"mine")
        message = await expect(FP, c.node.node_publish_volume(vol.publish_request()))
        assert "not empty" in message
        assert not is_mount_point(vol.target)
        assert (vol.target / "kept").read_bytes() == b"mine"
        await vol.unpublish()  # nothing of the volume's is there: nothing to undo, nothing removed
        assert (vol.target / "kept").read_bytes() == b"mine"
        await vol.unstage()


async def test_unpublish_finishes_when_the_directory_under_its_bind_filled_up(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-filled-under", mount_cap()).up()
        under = driver.root / "under"
        under.mkdir()
        subprocess.run(["mount", "--bind", str(vol.target.parent), str(under)], check=True)
        try:  # a non-recursive bind of the parent shows the directory beneath the volume's bind
            (under / "mount" / "left-by-someone").write_bytes(b"x")
        finally:
            subprocess.run(["umount", str(under)], check=True)
        await vol.unpublish()
        assert not is_mount_point(vol.target)
        assert (vol.target / "left-by-someone").read_bytes() == b"x"
        await vol.unpublish()
        await vol.unstage()


# ---- 15: INTERNAL only where the cause is unknown ---------------------------------------------------------------


async def test_a_read_only_stage_of_a_blank_volume_says_it_has_no_filesystem(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-blank-ro", mount_cap(mode=Mode.SINGLE_NODE_READER_ONLY)).create()
        message = await expect(FP, c.node.node_stage_volume(vol.stage_request()))
        assert "no filesystem" in message
        assert loops_backed_under(driver.data_dir) == []
        assert not is_mount_point(vol.staging)


async def test_a_stage_whose_image_is_missing_names_the_cause(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-no-image", mount_cap()).create()
        (driver.data_dir / f"{vol.volume_id}.img").unlink()
        vol.staging.mkdir(parents=True)
        with pytest.raises(GRPCError) as info:
            await c.node.node_stage_volume(vol.stage_request())
        assert info.value.status in (FP, NF), f"{info.value.status.name}: {info.value.message}"
        message = info.value.message or ""
        assert vol.volume_id in message and ("is missing" in message or "does not exist" in message), message
        assert loops_backed_under(driver.data_dir) == []


# ---- an upgrade: a block volume an earlier driver staged at <staging>/device -------------------------------------


async def test_a_block_stage_of_an_earlier_driver_is_published_and_unstaged(driver: DriverProcess) -> None:
    """Earlier drivers bound the device onto ``<staging>/device``; that bind, proven the volume's own device, is
    still published from and unstaged, so an upgrade strands no volume."""
    async with connect(driver.socket_path) as c:
        vol = await Volume(c, driver, "pvc-old-layout", block_cap()).create()
    driver.stop()
    image = driver.data_dir / f"{vol.volume_id}.img"
    device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    vol.staging.mkdir(parents=True)
    (vol.staging / "device").touch()
    subprocess.run(["mount", "--bind", device, str(vol.staging / "device")], check=True)
    driver.start()  # finds the attached loop device in sysfs
    async with connect(driver.socket_path) as c:
        vol.c = c
        await vol.publish()
        vol.write(b"old layout")
        assert vol.read(10) == b"old layout"
        await expect(FP, vol.unstage())  # still published
        await vol.unpublish()
        await vol.unstage()
        assert not (vol.staging / "device").exists()
        await vol.stage()  # and the next stage is the new layout: no device node in the staging directory
        assert not any(stat.S_ISBLK(p.lstat().st_mode) for p in vol.staging.iterdir())
        await vol.publish()
        assert vol.read(10) == b"old layout"
        await vol.down()
    assert_nothing_left(driver)
