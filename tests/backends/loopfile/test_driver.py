"""The loopfile driver end to end: a real ``localcsi serve`` process, real loop devices, mkfs and mounts.

Every test talks gRPC over the driver's unix socket, as kubelet and the sidecars do.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e.files import write_file
from e2e.leaks import loops_backed_under, mounts_under
from tests.lifecycle import PAYLOAD, Lifecycle, expect
from tests.support import MIB, NODE_ID, DriverProcess, assert_no_leaks, block_cap, connect, create_request, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
Mode = csi.VolumeCapabilityAccessModeMode


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
async def test_mount_lifecycle_keeps_data_across_restage(driver: DriverProcess, fs_type: str) -> None:
    size = 320 * MIB if fs_type == "xfs" else 64 * MIB
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, f"pvc-{fs_type}", mount_cap(fs_type), size)
        created = await vol.create()
        assert created.capacity_bytes >= size
        assert created.accessible_topology[0].segments == {"topology.localcsi.dev/node": NODE_ID}
        await vol.stage(await vol.attach())
        await vol.publish()
        assert any(p == str(vol.target) for p in mounts_under(driver.kubelet_dir))
        vol.write()
        await vol.unpublish()
        await vol.unstage()
        assert loops_backed_under(driver.data_dir) == []
        await vol.stage()
        await vol.publish()
        assert vol.read() == PAYLOAD
        fstype = subprocess.run(["findmnt", "-no", "FSTYPE", str(vol.staging)], capture_output=True, text=True)
        assert fstype.stdout.strip() == fs_type
        await vol.down()
    assert_no_leaks(driver)
    assert driver.images() == []


async def test_block_volume_lifecycle(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-block", block_cap(), 32 * MIB)
        await vol.up()
        assert stat.S_ISBLK(os.stat(vol.target).st_mode)
        vol.write()
        await vol.unpublish()
        await vol.unstage()
        await vol.stage()
        await vol.publish()
        assert vol.read() == PAYLOAD
        stats = await c.node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
            volume_id=vol.volume_id, volume_path=str(vol.target)))
        assert stats.usage[0].total == 32 * MIB
        await vol.down()
    assert_no_leaks(driver)


async def test_data_survives_kill9_and_simulated_reboot(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-reboot", mount_cap("ext4"))
        await vol.up()
        vol.write()
    driver.kill9()
    driver.start()
    async with connect(driver.socket_path) as c:
        vol.c = c
        # kubelet after a driver restart: every call repeated, all idempotent.
        await vol.stage()
        await vol.publish()
        assert vol.read() == PAYLOAD
    driver.kill9()
    # A reboot: mounts and loop devices are gone, the files remain.
    for point in sorted(mounts_under(driver.kubelet_dir), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)
    for info in loops_backed_under(driver.data_dir):
        subprocess.run(["losetup", "-d", info.device], check=True)
    driver.start()
    async with connect(driver.socket_path) as c:
        vol.c = c
        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [vol.volume_id]
        await vol.stage()
        await vol.publish()
        assert vol.read() == PAYLOAD
        await vol.down()
    assert_no_leaks(driver)


async def test_every_call_is_idempotent(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-idem", mount_cap("ext4"))
        first = await vol.create()
        again = await vol.create()
        assert (again.volume_id, again.capacity_bytes) == (first.volume_id, first.capacity_bytes)
        ctx = await vol.attach()
        assert await vol.attach() == ctx
        for _ in range(2):
            await vol.stage(ctx)
        for _ in range(2):
            await vol.publish()
        vol.write()
        for _ in range(2):
            await vol.unpublish()
        assert not vol.target.exists()
        for _ in range(2):
            await vol.unstage()
        for _ in range(2):
            await vol.detach()
        for _ in range(2):
            await vol.delete()
    assert_no_leaks(driver)
    assert driver.images() == []


async def test_readonly_publish_refuses_writes(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-ro", mount_cap("ext4"))
        await vol.create()
        await vol.stage(await vol.attach())
        await vol.publish(readonly=True)
        with pytest.raises(OSError) as info:
            write_file(vol.target / "nope", b"x")
        assert info.value.errno == errno.EROFS
        await vol.down()


async def test_conflicting_create_is_already_exists(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        await c.controller.create_volume(create_request("pvc-conflict", 64 * MIB))
        await expect(Status.ALREADY_EXISTS, c.controller.create_volume(create_request("pvc-conflict", 128 * MIB)))
        await expect(Status.ALREADY_EXISTS, c.controller.create_volume(
            create_request("pvc-conflict", 64 * MIB, parameters={"loopfile.localcsi.dev/provisioning": "thin"})))


async def test_spec_error_codes(driver: DriverProcess) -> None:
    missing = "lcv-" + "0" * 32
    staging = str(driver.kubelet_dir / "s")
    target = str(driver.kubelet_dir / "t")
    cap = mount_cap()
    ctl, node = None, None
    async with connect(driver.socket_path) as c:
        ctl, node = c.controller, c.node
        ia, nf, fp = Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.FAILED_PRECONDITION
        await expect(ia, ctl.create_volume(csi.CreateVolumeRequest(volume_capabilities=[cap])))
        await expect(ia, ctl.create_volume(csi.CreateVolumeRequest(name="x")))
        await expect(ia, ctl.create_volume(create_request("multi", cap=mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER))))
        await expect(Status.OUT_OF_RANGE, ctl.create_volume(csi.CreateVolumeRequest(
            name="small", volume_capabilities=[mount_cap("xfs")],
            capacity_range=csi.CapacityRange(required_bytes=MIB, limit_bytes=2 * MIB))))
        await expect(Status.RESOURCE_EXHAUSTED, ctl.create_volume(create_request("huge", 1 << 60)))
        await expect(Status.RESOURCE_EXHAUSTED, ctl.create_volume(csi.CreateVolumeRequest(
            name="elsewhere", volume_capabilities=[cap], accessibility_requirements=csi.TopologyRequirement(
                requisite=[csi.Topology(segments={"topology.localcsi.dev/node": "other-node"})]))))
        await expect(ia, ctl.delete_volume(csi.DeleteVolumeRequest()))
        await expect(ia, ctl.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            node_id=NODE_ID, volume_capability=cap)))
        await expect(ia, ctl.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=missing, volume_capability=cap)))
        await expect(ia, ctl.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=missing, node_id=NODE_ID)))
        await expect(nf, ctl.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=missing, node_id=NODE_ID, volume_capability=cap)))
        real = (await ctl.create_volume(create_request("pvc-codes"))).volume
        assert real is not None
        await expect(nf, ctl.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=real.volume_id, node_id="no-such-node", volume_capability=cap)))
        await expect(nf, ctl.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=missing, volume_capabilities=[cap])))
        await expect(ia, ctl.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=real.volume_id)))
        await expect(Status.ABORTED, ctl.list_volumes(csi.ListVolumesRequest(starting_token="bogus")))
        await expect(nf, ctl.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=missing)))
        await expect(ia, ctl.controller_expand_volume(csi.ControllerExpandVolumeRequest(volume_id=real.volume_id)))
        await expect(nf, ctl.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=missing, capacity_range=csi.CapacityRange(required_bytes=MIB))))
        await expect(ia, node.node_stage_volume(csi.NodeStageVolumeRequest(
            staging_target_path=staging, volume_capability=cap)))
        await expect(ia, node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=real.volume_id, volume_capability=cap)))
        await expect(ia, node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=real.volume_id, staging_target_path=staging)))
        await expect(nf, node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=missing, staging_target_path=staging, volume_capability=cap)))
        await expect(fp, node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=real.volume_id, staging_target_path=staging, volume_capability=cap,
            publish_context={"localcsi.dev/node": "other-node"})))
        await expect(ia, node.node_unstage_volume(csi.NodeUnstageVolumeRequest(staging_target_path=staging)))
        await expect(ia, node.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=real.volume_id)))
        await expect(ia, node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=real.volume_id, staging_target_path=staging, volume_capability=cap)))
        # The spec's own row: STAGE_UNSTAGE_VOLUME is advertised but no staging_target_path was set.
        await expect(fp, node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=real.volume_id, target_path=target, volume_capability=cap)))
        await expect(ia, node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=real.volume_id, staging_target_path=staging, target_path=target)))
        await expect(nf, node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=missing, staging_target_path=staging, target_path=target, volume_capability=cap)))
        # Publish before stage.
        await expect(fp, node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=real.volume_id, staging_target_path=staging, target_path=target, volume_capability=cap)))
        await expect(ia, node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(target_path=target)))
        await expect(ia, node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=real.volume_id)))
        await expect(ia, node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(volume_path=target)))
        await expect(nf, node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
            volume_id=missing, volume_path=target)))
        await expect(nf, node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
            volume_id=real.volume_id, volume_path=str(driver.kubelet_dir / "absent"))))
        await expect(nf, node.node_expand_volume(csi.NodeExpandVolumeRequest(
            volume_id=missing, volume_path=target)))
        await ctl.delete_volume(csi.DeleteVolumeRequest(volume_id=real.volume_id))
    assert_no_leaks(driver)


async def test_hostile_paths_and_names_are_refused(driver: DriverProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = driver.kubelet_dir / "link"
    link.symlink_to(outside)
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-hostile", mount_cap())
        await vol.create()
        ia = Status.INVALID_ARGUMENT
        for bad in ("relative/path", f"{driver.kubelet_dir}/../../etc", f"{driver.kubelet_dir}/a\0b",
                    str(link / "mnt"), "/"):
            await expect(ia, c.node.node_stage_volume(csi.NodeStageVolumeRequest(
                volume_id=vol.volume_id, staging_target_path=bad, volume_capability=vol.cap)))
        for name in ("x" * 4096, "bad\nname", "nul\0name"):
            await expect(ia, c.controller.create_volume(create_request(name)))
        await expect(ia, c.controller.create_volume(create_request("pvc-flags", cap=mount_cap(flags=("bind",)))))
        await expect(ia, c.controller.create_volume(
            create_request("pvc-param", parameters={"loopfile.localcsi.dev/provisioning": "../../x"})))
        await vol.delete()
    assert list(outside.iterdir()) == []
    assert_no_leaks(driver)


async def test_online_expansion_xfs_keeps_data(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-grow", mount_cap("xfs"), 320 * MIB)
        await vol.up()
        vol.write()
        before = os.statvfs(vol.target)
        new_size = 640 * MIB
        resp = await c.controller.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=new_size)))
        assert resp.capacity_bytes == new_size and resp.node_expansion_required
        node_resp = await c.node.node_expand_volume(csi.NodeExpandVolumeRequest(
            volume_id=vol.volume_id, volume_path=str(vol.target), staging_target_path=str(vol.staging),
            capacity_range=csi.CapacityRange(required_bytes=new_size), volume_capability=vol.cap))
        assert node_resp.capacity_bytes == new_size
        after = os.statvfs(vol.target)
        assert after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize + 250 * MIB
        assert vol.read() == PAYLOAD
        await vol.down()
    assert_no_leaks(driver)


async def test_64_concurrent_creates_run_concurrently(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        ids: list[str] = []

        async def create(i: int) -> None:
            resp = await c.controller.create_volume(create_request(f"pvc-burst-{i}", 16 * MIB))
            assert resp.volume is not None
            ids.append(resp.volume.volume_id)

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(create, i)
        assert len(set(ids)) == 64
        assert len(driver.images()) == 64
        assert max_overlap(driver, "CreateVolume") > 1
        async with anyio.create_task_group() as tg:
            for vid in ids:
                tg.start_soon(c.controller.delete_volume, csi.DeleteVolumeRequest(volume_id=vid))
    assert driver.images() == []


async def test_concurrent_creates_of_one_name_make_one_volume(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        outcomes: list[str] = []

        async def create() -> None:
            try:
                resp = await c.controller.create_volume(create_request("pvc-same", 256 * MIB))
                assert resp.volume is not None
                outcomes.append(resp.volume.volume_id)
            except GRPCError as exc:
                assert exc.status == Status.ABORTED
                outcomes.append("aborted")

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(create)
        assert len({o for o in outcomes if o != "aborted"}) == 1
        assert len(driver.images()) == 1


def max_overlap(driver: DriverProcess, rpc: str) -> int:
    """The most calls of ``rpc`` the driver's own log shows running at the same time."""
    events: list[tuple[float, int]] = []
    for line in driver.log().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)["record"]
        if record["extra"].get("rpc") != rpc:
            continue
        t = record["time"]["timestamp"]
        if record["message"].startswith(f"{rpc} request"):
            events.append((t, 1))
        elif record["message"].startswith(f"{rpc} OK in"):
            events.append((t, -1))
    depth = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        depth += delta
        best = max(best, depth)
    return best


async def test_a_stage_failing_after_its_mount_undoes_the_mount_and_the_attach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CO sees the stage's own error, and nothing this call did stays behind (mount, loop device)."""
    monkeypatch.setenv("LOCALCSI_FAULT", "stage.after_mount:fail")  # the first stage fails once, after mounting
    with DriverProcess(tmp_path).running() as proc:
        async with connect(proc.socket_path) as c:
            vol = Lifecycle(c, proc, "pvc-stage-fails", mount_cap("ext4"))
            await vol.create()
            context = await vol.attach()
            error = await expect(Status.INTERNAL, vol.stage(context))
            assert "fault injected at stage.after_mount" in (error.message or "")
            assert_no_leaks(proc)
            await vol.stage(context)  # kubelet's retry
            await vol.publish()
            vol.write()
            assert vol.read() == PAYLOAD
            await vol.down()
        assert_no_leaks(proc)


async def test_an_image_written_behind_the_drivers_back_is_never_formatted(driver: DriverProcess) -> None:
    """NodeStage skips its content probe only for an image with no data at all; anything written counts."""
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-foreign", mount_cap("xfs"), 320 * MIB)
        await vol.create()
        image = driver.data_dir / f"{vol.volume_id}.img"
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)  # someone else's filesystem
        error = await expect(Status.FAILED_PRECONDITION, vol.stage(await vol.attach()))
        assert "ext4" in (error.message or "")
        probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(image)], capture_output=True,
                               text=True)
        assert probe.stdout.strip() == "ext4"
        await vol.detach()
        await vol.delete()
    assert_no_leaks(driver)
