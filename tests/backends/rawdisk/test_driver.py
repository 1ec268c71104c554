"""``localcsi serve --backend rawdisk`` end to end over its unix socket (``localcsi disks``: tests/csi/cli).

Disks are loop devices reachable only through this test's own symlinks
(tests/backends/rawdisk/support.py), so the driver can never see another
test's devices.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e.files import write_file
from tests.backends.rawdisk.support import MIB, FakeDisks, disk_states, fake_disks, running_driver
from tests.lifecycle import Lifecycle, offered
from tests.support import DriverProcess, block_cap, connect, create_request, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
Rpc = csi.ControllerServiceCapabilityRpcType


disks = pytest.fixture(fake_disks, name="disks")


@pytest.fixture
def driver(disks: FakeDisks) -> Iterator[DriverProcess]:
    yield from running_driver(disks)


async def test_filesystem_volume_keeps_data_across_restage_and_restart(disks: FakeDisks,
                                                                       driver: DriverProcess) -> None:
    disks.add("small", 128 * MIB)
    disks.add("big", 512 * MIB)
    driver.start()
    payload = os.urandom(128 * 1024)
    async with connect(driver.socket_path) as c:
        advertised = await offered(c)
        assert Rpc.GET_CAPACITY in advertised and Rpc.EXPAND_VOLUME not in advertised
        capacity = await c.controller.get_capacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
        assert capacity.available_capacity == (126 + 510) * MIB
        assert capacity.maximum_volume_size is not None and capacity.maximum_volume_size == 510 * MIB

        vol = Lifecycle(c, driver, "pvc-xfs", mount_cap("xfs"), 300 * MIB)
        created = await vol.create()
        assert created.capacity_bytes == 510 * MIB  # only the big disk fits xfs's minimum and the request
        assert (await vol.create()).volume_id == created.volume_id
        await vol.use()
        write_file(vol.target / "data", payload)
        await vol.release()
        await vol.use()
        assert (vol.target / "data").read_bytes() == payload

    driver.restart()  # SIGKILL while staged and published: the claim and the view are found again
    async with connect(driver.socket_path) as c:
        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [vol.volume_id]
        assert (vol.target / "data").read_bytes() == payload
        vol.c = c
        await vol.release()
        await vol.use()
        assert (vol.target / "data").read_bytes() == payload
        await vol.release()
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        capacity = await c.controller.get_capacity(csi.GetCapacityRequest())
        assert capacity.available_capacity == (126 + 510) * MIB
    assert disk_states([disks.pattern])["big"]["state"] == "free"


async def test_block_volume_and_error_codes(disks: FakeDisks, driver: DriverProcess) -> None:
    disks.add("d", 64 * MIB)
    driver.start()
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-block", block_cap(), 16 * MIB)
        await vol.create()
        with pytest.raises(GRPCError) as caught:
            await c.controller.create_volume(create_request("pvc-other", 16 * MIB, block_cap()))
        assert caught.value.status is Status.RESOURCE_EXHAUSTED
        with pytest.raises(GRPCError) as caught:
            await c.controller.create_volume(create_request("pvc-block", 100 * MIB, block_cap()))
        assert caught.value.status is Status.ALREADY_EXISTS
        await vol.use()
        with open(vol.target, "r+b") as handle:
            handle.write(b"raw bytes on a whole disk")
        with pytest.raises(GRPCError) as caught:
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        assert caught.value.status is Status.FAILED_PRECONDITION
        await vol.release()
        image = disks.images / "d.img"
        with image.open("rb") as handle:
            handle.seek(MIB)
            assert handle.read(25) == b"raw bytes on a whole disk"
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        with image.open("rb") as handle:
            handle.seek(MIB)
            assert handle.read(25) == bytes(25)
