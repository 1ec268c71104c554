"""``localcsi serve --backend rawdisk`` end to end over its unix socket, and ``localcsi disks``.

Disks are loop devices reachable only through this test's own symlinks
(tests/backends/rawdisk_support.py), so the driver can never see another
test's devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from tests.backends.rawdisk_support import MIB, FakeDisks, fake_disks, make_ext4, running_driver
from tests.support import NODE_ID, Client, DriverProcess, block_cap, connect, create_request, mount_cap, write_file

pytestmark = [pytest.mark.anyio, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
Rpc = csi.ControllerServiceCapabilityRpcType


disks = pytest.fixture(fake_disks, name="disks")


@pytest.fixture
def driver(disks: FakeDisks) -> Iterator[DriverProcess]:
    yield from running_driver(disks)


class Volume:
    def __init__(self, c: Client, driver: DriverProcess, name: str, cap: csi.VolumeCapability) -> None:
        self.c, self.name, self.cap = c, name, cap
        self.staging = driver.kubelet_dir / "plugins" / name / "globalmount"
        self.target = driver.kubelet_dir / "pods" / name / "mount"
        self.volume_id = ""

    async def create(self, size: int) -> csi.Volume:
        resp = await self.c.controller.create_volume(create_request(self.name, size, self.cap))
        assert resp.volume is not None
        self.volume_id = resp.volume.volume_id
        return resp.volume

    async def stage_and_publish(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        await self.c.controller.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=self.volume_id, node_id=NODE_ID, volume_capability=self.cap))
        await self.c.node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging), volume_capability=self.cap))
        await self.c.node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging), target_path=str(self.target),
            volume_capability=self.cap))

    async def unpublish_and_unstage(self) -> None:
        await self.c.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
            volume_id=self.volume_id, target_path=str(self.target)))
        await self.c.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging)))
        await self.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
            volume_id=self.volume_id, node_id=NODE_ID))


def disk_states(patterns: list[str]) -> dict[str, dict[str, object]]:
    argv = [sys.executable, "-m", "csi.cli", "disks", "--json"]
    for pattern in patterns:
        argv += ["--rawdisk-device", pattern]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO, timeout=60).stdout
    return {os.path.basename(str(d["path"])).removeprefix("disk-"): d for d in json.loads(out)["disks"]}


async def test_filesystem_volume_keeps_data_across_restage_and_restart(disks: FakeDisks,
                                                                       driver: DriverProcess) -> None:
    disks.add("small", 128 * MIB)
    disks.add("big", 512 * MIB)
    driver.start()
    payload = os.urandom(128 * 1024)
    async with connect(driver.socket_path) as c:
        caps = await c.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
        offered = {cap.rpc.type for cap in caps.capabilities if cap.rpc is not None}
        assert Rpc.GET_CAPACITY in offered and Rpc.EXPAND_VOLUME not in offered
        capacity = await c.controller.get_capacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
        assert capacity.available_capacity == (126 + 510) * MIB
        assert capacity.maximum_volume_size is not None and capacity.maximum_volume_size == 510 * MIB

        vol = Volume(c, driver, "pvc-xfs", mount_cap("xfs"))
        created = await vol.create(300 * MIB)
        assert created.capacity_bytes == 510 * MIB  # only the big disk fits xfs's minimum and the request
        assert (await vol.create(300 * MIB)).volume_id == created.volume_id
        await vol.stage_and_publish()
        write_file(vol.target / "data", payload)
        await vol.unpublish_and_unstage()
        await vol.stage_and_publish()
        assert (vol.target / "data").read_bytes() == payload

    driver.restart()  # SIGKILL while staged and published: the claim and the view are found again
    async with connect(driver.socket_path) as c:
        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [vol.volume_id]
        assert (vol.target / "data").read_bytes() == payload
        vol.c = c
        await vol.unpublish_and_unstage()
        await vol.stage_and_publish()
        assert (vol.target / "data").read_bytes() == payload
        await vol.unpublish_and_unstage()
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        capacity = await c.controller.get_capacity(csi.GetCapacityRequest())
        assert capacity.available_capacity == (126 + 510) * MIB
    assert disk_states([disks.pattern])["big"]["state"] == "free"


async def test_block_volume_and_error_codes(disks: FakeDisks, driver: DriverProcess) -> None:
    disks.add("d", 64 * MIB)
    driver.start()
    async with connect(driver.socket_path) as c:
        vol = Volume(c, driver, "pvc-block", block_cap())
        await vol.create(16 * MIB)
        with pytest.raises(GRPCError) as caught:
            await c.controller.create_volume(create_request("pvc-other", 16 * MIB, block_cap()))
        assert caught.value.status is Status.RESOURCE_EXHAUSTED
        with pytest.raises(GRPCError) as caught:
            await c.controller.create_volume(create_request("pvc-block", 100 * MIB, block_cap()))
        assert caught.value.status is Status.ALREADY_EXISTS
        await vol.stage_and_publish()
        with open(vol.target, "r+b") as handle:
            handle.write(b"raw bytes on a whole disk")
        with pytest.raises(GRPCError) as caught:
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        assert caught.value.status is Status.FAILED_PRECONDITION
        await vol.unpublish_and_unstage()
        image = disks.images / "d.img"
        with image.open("rb") as handle:
            handle.seek(MIB)
            assert handle.read(25) == b"raw bytes on a whole disk"
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        with image.open("rb") as handle:
            handle.seek(MIB)
            assert handle.read(25) == bytes(25)


async def test_disks_command_lists_states_reasons_and_pv_manifests(disks: FakeDisks, driver: DriverProcess) -> None:
    disks.add("free", 64 * MIB)
    disks.add("ext4", 64 * MIB, prepare=make_ext4)
    disks.add("claimed", 128 * MIB)
    driver.start()
    async with connect(driver.socket_path) as c:
        vol = Volume(c, driver, "pvc-adopt", mount_cap("ext4"))
        await vol.create(100 * MIB)
        await vol.stage_and_publish()  # formats the partition with ext4
        await vol.unpublish_and_unstage()
    driver.stop()
    states = disk_states([disks.pattern])
    assert states["free"]["state"] == "free"
    assert states["ext4"]["state"] == "excluded" and "ext4" in str(states["ext4"]["reason"])
    assert states["claimed"]["state"] == "claimed" and states["claimed"]["volume_id"] == vol.volume_id
    assert states["claimed"]["volume_name"] == "pvc-adopt"

    table = subprocess.run([sys.executable, "-m", "csi.cli", "disks", "--rawdisk-device", disks.pattern],
                           capture_output=True, text=True, check=True, cwd=REPO, timeout=60).stdout
    assert vol.volume_id in table and "someone's data" in table

    manifests = subprocess.run(
        [sys.executable, "-m", "csi.cli", "disks", "--rawdisk-device", disks.pattern, "--pv-manifests",
         "--node", "node-7", "--storage-class", "local-disks"],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=60).stdout
    assert f'volumeHandle: "{vol.volume_id}"' in manifests
    assert 'fsType: "ext4"' in manifests and "volumeMode: Filesystem" in manifests
    assert 'values: ["node-7"]' in manifests and 'storageClassName: "local-disks"' in manifests
    assert f'storage: "{126 * MIB}"' in manifests
