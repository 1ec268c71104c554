"""CSI Controller service over grpclib's in-memory channel with a scripted backend: what each call answers.

Error mapping is tests/csi/test_errors.py's, the wrapper's guarantees (ABORTED on a busy volume, mutations
that outlive their caller) tests/csi/test_rpc.py's; the real backends' controller calls are in tests/backends/.
"""

from __future__ import annotations

import pytest

from csi.config import Mode
from csi.gen.csi import v1 as csi
from tests.csi.scripted import ScriptedBackend, serve
from tests.support import create_request

pytestmark = pytest.mark.anyio


async def test_controller_mode_attaches_by_context_and_defers_expansion() -> None:
    async with serve(ScriptedBackend(), Mode.CONTROLLER) as ch:
        stub = csi.ControllerStub(ch)
        caps = await stub.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
        types = {c.rpc.type for c in caps.capabilities if c.rpc}
        assert csi.ControllerServiceCapabilityRpcType.CREATE_DELETE_VOLUME not in types
        assert csi.ControllerServiceCapabilityRpcType.PUBLISH_UNPUBLISH_VOLUME in types
        vid = "lcv-" + "1" * 32
        resp = await stub.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="n7", volume_capability=create_request("x").volume_capabilities[0]))
        assert resp.publish_context == {"localcsi.dev/node": "n7"}
        grow = await stub.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=1 << 30)))
        assert grow.node_expansion_required and grow.capacity_bytes == 1 << 30


async def test_list_volumes_pages_in_order() -> None:
    backend = ScriptedBackend()
    async with serve(backend) as ch:
        stub = csi.ControllerStub(ch)
        for i in range(7):
            await stub.create_volume(create_request(f"pvc-{i}"))
        seen, token, pages = [], "", 0
        while True:
            resp = await stub.list_volumes(csi.ListVolumesRequest(max_entries=3, starting_token=token))
            seen += [e.volume.volume_id for e in resp.entries if e.volume]
            pages += 1
            token = resp.next_token
            if not token:
                break
    assert seen == sorted(backend.volumes) and pages == 3


async def test_get_capacity_accepts_the_provisioners_mode_less_capability() -> None:
    """external-provisioner's capacity controller sends the access type with access mode UNKNOWN."""
    async with serve(ScriptedBackend()) as ch:
        cap = csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type="ext4"),
                                   access_mode=csi.VolumeCapabilityAccessMode())
        resp = await csi.ControllerStub(ch).get_capacity(csi.GetCapacityRequest(
            volume_capabilities=[cap], accessible_topology=csi.Topology(
                segments={"topology.localcsi.dev/node": "n1"})))
        assert (resp.available_capacity, resp.maximum_volume_size) == (100, 50)
        ntfs = csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type="ntfs"))
        none = await csi.ControllerStub(ch).get_capacity(csi.GetCapacityRequest(volume_capabilities=[ntfs]))
        assert none.available_capacity == 0
