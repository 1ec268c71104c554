"""CSI Node service (csi/node.py) over grpclib's in-memory channel: what each call checks before it touches a mount.

Arguments, paths outside the kubelet directory, the node a volume was attached to, unknown volumes, busy
ones, and the answers that need no mount (info, capabilities, calls with nothing to undo). Staging and
publishing for real is tests/backends/test_node.py's (the node logic) and each backend's driver tests'.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status

from backends.base import TOPOLOGY_KEY, Features, Volume, VolumeSpec, volume_id_for
from csi.capabilities import node_rpcs
from csi.gen.csi import v1 as csi
from tests.csi.scripted import MAX_VOLUMES, NODE, ScriptedBackend, serve
from tests.lifecycle import expect
from tests.support import create_request, mount_cap

pytestmark = pytest.mark.anyio
UNKNOWN = "lcv-" + "0" * 32
IA, NF, FP = Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.FAILED_PRECONDITION


@pytest.fixture
def kubelet(tmp_path: Path) -> Path:
    return tmp_path / "kubelet"


@pytest.fixture
def backend() -> ScriptedBackend:
    backend = ScriptedBackend()
    volume_id = volume_id_for("pvc-1")
    backend.volumes[volume_id] = Volume(volume_id, "pvc-1", 64 << 20)
    return backend


@pytest.fixture
async def node(backend: ScriptedBackend, kubelet: Path) -> AsyncIterator[csi.NodeStub]:
    (kubelet / "staging").mkdir(parents=True)
    async with serve(backend, kubelet_dirs=(str(kubelet),)) as channel:
        yield csi.NodeStub(channel)


async def test_node_info_names_this_node_its_topology_and_its_volume_limit(node: csi.NodeStub) -> None:
    info = await node.node_get_info(csi.NodeGetInfoRequest())
    assert (info.node_id, info.max_volumes_per_node) == (NODE, MAX_VOLUMES)
    assert info.accessible_topology is not None and info.accessible_topology.segments == {TOPOLOGY_KEY: NODE}


@pytest.mark.parametrize("expansion", [True, False])
async def test_node_capabilities_follow_the_features(expansion: bool) -> None:
    async with serve(ScriptedBackend(features=Features(expansion=expansion))) as channel:
        reply = await csi.NodeStub(channel).node_get_capabilities(csi.NodeGetCapabilitiesRequest())
    advertised = [c.rpc.type for c in reply.capabilities if c.rpc is not None]
    assert advertised == node_rpcs(Features(expansion=expansion))
    assert (csi.NodeServiceCapabilityRpcType.EXPAND_VOLUME in advertised) is expansion


def stage(volume_id: str, staging: Path | str, **fields: object) -> csi.NodeStageVolumeRequest:
    request = csi.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging),
                                         volume_capability=mount_cap())
    for name, value in fields.items():
        setattr(request, name, value)
    return request


async def test_stage_checks_its_arguments_before_the_backend(node: csi.NodeStub, kubelet: Path,
                                                             backend: ScriptedBackend) -> None:
    volume_id = volume_id_for("pvc-1")
    staging = kubelet / "staging" / "pvc-1"
    await expect(IA, node.node_stage_volume(stage("", staging)))
    await expect(NF, node.node_stage_volume(stage("not-an-id", staging)))  # never one of ours
    await expect(IA, node.node_stage_volume(stage(volume_id, "")))
    await expect(IA, node.node_stage_volume(stage(volume_id, kubelet.parent / "outside")))
    await expect(IA, node.node_stage_volume(stage(volume_id, f"{kubelet}/../escape")))
    await expect(IA, node.node_stage_volume(stage(volume_id, staging, volume_capability=None)))
    refused = await expect(FP, node.node_stage_volume(stage(volume_id, staging,
                                                            publish_context={"localcsi.dev/node": "n2"})))
    assert "attached to node 'n2'" in (refused.message or "")
    await expect(NF, node.node_stage_volume(stage(UNKNOWN, staging)))
    assert list(backend.volumes) == [volume_id] and not staging.exists()


async def test_a_node_call_on_a_volume_busy_elsewhere_is_aborted(kubelet: Path) -> None:
    release, creating = anyio.Event(), anyio.Event()

    async def slow(spec: VolumeSpec) -> None:
        creating.set()
        await release.wait()

    async with serve(ScriptedBackend(slow), kubelet_dirs=(str(kubelet),)) as channel, anyio.create_task_group() as tg:
        tg.start_soon(csi.ControllerStub(channel).create_volume, create_request("pvc-busy"))
        await creating.wait()
        busy = volume_id_for("pvc-busy")
        await expect(Status.ABORTED, csi.NodeStub(channel).node_stage_volume(stage(busy, kubelet / "staging")))
        await expect(Status.ABORTED, csi.NodeStub(channel).node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
            volume_id=busy, target_path=str(kubelet / "target"))))
        release.set()


async def test_publish_needs_a_staged_volume(node: csi.NodeStub, kubelet: Path) -> None:
    volume_id = volume_id_for("pvc-1")
    target = str(kubelet / "pods" / "p" / "mount")
    staging = kubelet / "staging"

    def publish(**fields: object) -> csi.NodePublishVolumeRequest:
        request = csi.NodePublishVolumeRequest(volume_id=volume_id, staging_target_path=str(staging),
                                               target_path=target, volume_capability=mount_cap())
        for name, value in fields.items():
            setattr(request, name, value)
        return request

    await expect(IA, node.node_publish_volume(publish(target_path="")))
    await expect(IA, node.node_publish_volume(publish(target_path="/etc/target")))
    await expect(FP, node.node_publish_volume(publish(staging_target_path="")))  # the spec's own row
    await expect(IA, node.node_publish_volume(publish(volume_capability=None)))
    await expect(NF, node.node_publish_volume(publish(volume_id=UNKNOWN)))
    not_staged = await expect(FP, node.node_publish_volume(publish()))  # a directory, but nothing mounted
    assert "is not staged" in (not_staged.message or "")
    assert not Path(target).exists()


async def test_calls_with_nothing_to_undo_succeed(node: csi.NodeStub, kubelet: Path) -> None:
    volume_id = volume_id_for("pvc-1")
    await node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                    target_path=str(kubelet / "pods" / "gone")))
    await node.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=volume_id,
                                                                staging_target_path=str(kubelet / "staging")))
    await expect(NF, node.node_unstage_volume(csi.NodeUnstageVolumeRequest(  # a volume that does not exist
        volume_id=UNKNOWN, staging_target_path=str(kubelet / "staging"))))
    await expect(IA, node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id)))
    await expect(IA, node.node_unstage_volume(csi.NodeUnstageVolumeRequest(staging_target_path="/")))


async def test_stats_and_expansion_of_a_path_the_volume_is_not_at(node: csi.NodeStub, kubelet: Path) -> None:
    volume_id = volume_id_for("pvc-1")
    staging = str(kubelet / "staging")
    await expect(NF, node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(volume_id=UNKNOWN,
                                                                              volume_path=staging)))
    await expect(NF, node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(volume_id=volume_id,
                                                                              volume_path=staging)))
    await expect(IA, node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(volume_id=volume_id)))
    await expect(NF, node.node_expand_volume(csi.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=str(kubelet / "absent"))))
    # Nothing of the volume's is mounted at its staging path (the scripted backend has no device): nothing to grow.
    await expect(NF, node.node_expand_volume(csi.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=staging, capacity_range=csi.CapacityRange(required_bytes=128 << 20))))
