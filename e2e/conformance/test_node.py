"""Node service: capabilities, info, and every request-validation error of the node calls."""

from __future__ import annotations

import betterproto2
import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e.conformance.client import CRpc, NRpc
from e2e.conformance.config import AccessType
from e2e.conformance.harness import Harness
from e2e.conformance.oracle import expect_code

pytestmark = pytest.mark.anyio

INVALID = Status.INVALID_ARGUMENT


# ---- NodeGetCapabilities / NodeGetInfo ------------------------------------------------------------


async def test_node_capabilities_are_well_formed(h: Harness) -> None:
    h.need_node()
    reply = await h.client.node.node_get_capabilities(csi.NodeGetCapabilitiesRequest(), timeout=h.client.timeout)
    for cap in reply.capabilities:
        assert betterproto2.which_one_of(cap, "type")[0] == "rpc", f"capability without rpc: {cap!r}"
        assert cap.rpc is not None
        assert cap.rpc.type != NRpc.UNKNOWN, "UNKNOWN node capability advertised"


async def test_node_get_info_names_the_node(h: Harness) -> None:
    h.need_node()
    info = await h.client.node.node_get_info(csi.NodeGetInfoRequest(), timeout=h.client.timeout)
    assert info.node_id, "node_id is REQUIRED"
    assert info.max_volumes_per_node >= 0
    if h.caps.has_topology:
        assert info.accessible_topology is not None, (
            "plugin advertises VOLUME_ACCESSIBILITY_CONSTRAINTS but NodeGetInfo has no accessible_topology")
        assert info.accessible_topology.segments


# ---- NodeStageVolume / NodeUnstageVolume ----------------------------------------------------------


async def test_node_stage_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    req = csi.NodeStageVolumeRequest(staging_target_path=await h.new_staging_path(),
                                     volume_capability=h.capability())
    await expect_code(h.client.node.node_stage_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_stage_without_staging_path_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    volume = await h.create_volume()
    req = h.stage_request(volume, "", {})
    await expect_code(h.client.node.node_stage_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_stage_without_capability_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    volume = await h.create_volume()
    staging = await h.new_staging_path()
    req = h.stage_request(volume, staging, {})
    req.volume_capability = None
    h.tracker.stages[(volume.volume_id, staging)] = None
    await expect_code(h.client.node.node_stage_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_stage_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    staging = await h.new_staging_path()
    req = csi.NodeStageVolumeRequest(volume_id=await h.missing_volume_id(), staging_target_path=staging,
                                     volume_capability=h.capability(), secrets=dict(h.config.secrets))
    h.tracker.stages[(req.volume_id, staging)] = None
    await expect_code(h.client.node.node_stage_volume(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_unstage_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    req = csi.NodeUnstageVolumeRequest(staging_target_path=await h.new_staging_path())
    await expect_code(h.client.node.node_unstage_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_unstage_without_staging_path_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    volume = await h.create_volume()
    req = csi.NodeUnstageVolumeRequest(volume_id=volume.volume_id)
    await expect_code(h.client.node.node_unstage_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_unstage_of_unstaged_volume_succeeds(h: Harness) -> None:
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    volume = await h.create_volume()
    await h.unstage(volume.volume_id, await h.new_staging_path())


# ---- NodePublishVolume / NodeUnpublishVolume ------------------------------------------------------


async def test_node_publish_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_node()
    req = csi.NodePublishVolumeRequest(target_path=await h.new_target_path(), volume_capability=h.capability(),
                                       staging_target_path=await h.new_staging_path() if h.stages else "")
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_publish_without_target_path_is_invalid(h: Harness) -> None:
    h.need_node()
    volume = await h.create_volume()
    staging = await h.new_staging_path() if h.stages else ""
    req = h.publish_request(volume, staging, "", {})
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_publish_without_capability_is_invalid(h: Harness) -> None:
    h.need_node()
    volume = await h.create_volume()
    staging = await h.new_staging_path() if h.stages else ""
    target = await h.new_target_path()
    req = h.publish_request(volume, staging, target, {})
    req.volume_capability = None
    h.tracker.publications[(volume.volume_id, target)] = None
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_publish_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_node()
    staging = await h.new_staging_path() if h.stages else ""
    target = await h.new_target_path()
    req = csi.NodePublishVolumeRequest(volume_id=await h.missing_volume_id(), staging_target_path=staging,
                                       target_path=target, volume_capability=h.capability(),
                                       secrets=dict(h.config.secrets))
    h.tracker.publications[(req.volume_id, target)] = None
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_publish_without_staging_path_fails_precondition(h: Harness) -> None:
    """Spec: with STAGE_UNSTAGE_VOLUME advertised, a missing staging_target_path is FAILED_PRECONDITION.

    csi-sanity has no such check; the spec's NodePublishVolume error table names this code.
    """
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    volume = await h.create_volume()
    target = await h.new_target_path()
    req = h.publish_request(volume, "", target, {})
    h.tracker.publications[(volume.volume_id, target)] = None
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), Status.FAILED_PRECONDITION)


async def test_node_unpublish_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_node()
    req = csi.NodeUnpublishVolumeRequest(target_path=await h.new_target_path())
    await expect_code(h.client.node.node_unpublish_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_unpublish_without_target_path_is_invalid(h: Harness) -> None:
    h.need_node()
    volume = await h.create_volume()
    req = csi.NodeUnpublishVolumeRequest(volume_id=volume.volume_id)
    await expect_code(h.client.node.node_unpublish_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_unpublish_of_unpublished_volume_succeeds(h: Harness) -> None:
    h.need_node()
    volume = await h.create_volume()
    await h.unpublish(volume.volume_id, await h.new_target_path())


# ---- NodeGetVolumeStats ---------------------------------------------------------------------------


def _stats_req(volume_id: str, path: str, staging: str = "") -> csi.NodeGetVolumeStatsRequest:
    return csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path, staging_target_path=staging)


async def test_node_stats_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    req = _stats_req("", await h.new_staging_path())
    await expect_code(h.client.node.node_get_volume_stats(req, timeout=h.client.timeout), INVALID)


async def test_node_stats_without_volume_path_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    volume = await h.create_volume()
    await expect_code(h.client.node.node_get_volume_stats(_stats_req(volume.volume_id, ""),
                                                          timeout=h.client.timeout), INVALID)


async def test_node_stats_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    req = _stats_req(await h.missing_volume_id(), await h.new_staging_path())
    await expect_code(h.client.node.node_get_volume_stats(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_stats_at_nonexistent_path_is_not_found(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    att = await h.attach(await h.create_volume())
    missing = att.target_path + "-does-not-exist"
    await expect_code(h.client.node.node_get_volume_stats(_stats_req(att.volume.volume_id, missing),
                                                          timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_stats_at_path_without_the_volume_is_not_found(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    att = await h.attach(await h.create_volume())
    elsewhere = await h.new_staging_path()
    await expect_code(h.client.node.node_get_volume_stats(_stats_req(att.volume.volume_id, elsewhere),
                                                          timeout=h.client.timeout), Status.NOT_FOUND)


def _usage(reply: csi.NodeGetVolumeStatsResponse, unit: csi.VolumeUsageUnit) -> csi.VolumeUsage | None:
    return next((u for u in reply.usage if u.unit == unit), None)


async def test_node_stats_of_published_volume(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    att = await h.attach(await h.create_volume())
    reply = await h.client.node.node_get_volume_stats(
        _stats_req(att.volume.volume_id, att.target_path, att.staging_path), timeout=h.client.timeout)
    size = _usage(reply, csi.VolumeUsageUnit.BYTES)
    assert size is not None, f"no BYTES usage reported: {reply.usage!r}"
    assert size.total > 0
    assert 0 <= size.used <= size.total
    assert 0 <= size.available <= size.total
    if h.config.access is AccessType.MOUNT:
        assert size.total <= max(att.volume.capacity_bytes, h.config.volume_size_bytes)
    if NRpc.VOLUME_CONDITION in h.caps.node:
        assert reply.volume_condition is not None, "VOLUME_CONDITION advertised but no volume_condition reported"
        assert not reply.volume_condition.abnormal, reply.volume_condition.message


# ---- NodeExpandVolume -----------------------------------------------------------------------------


def _node_expand_req(h: Harness, volume_id: str, path: str, staging: str = "",
                     size: int | None = None) -> csi.NodeExpandVolumeRequest:
    return csi.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=path, staging_target_path=staging,
        capacity_range=csi.CapacityRange(required_bytes=size) if size else None,
        volume_capability=h.capability(), secrets=dict(h.config.secrets),
    )


async def test_node_expand_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.EXPAND_VOLUME)
    req = _node_expand_req(h, "", await h.new_staging_path())
    await expect_code(h.client.node.node_expand_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_expand_without_volume_path_is_invalid(h: Harness) -> None:
    h.need_node(NRpc.EXPAND_VOLUME)
    volume = await h.create_volume()
    req = _node_expand_req(h, volume.volume_id, "")
    await expect_code(h.client.node.node_expand_volume(req, timeout=h.client.timeout), INVALID)


async def test_node_expand_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_node(NRpc.EXPAND_VOLUME)
    req = _node_expand_req(h, await h.missing_volume_id(), await h.new_staging_path())
    await expect_code(h.client.node.node_expand_volume(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def _bytes_total(h: Harness, volume_id: str, target: str, staging: str) -> int | None:
    if NRpc.GET_VOLUME_STATS not in h.caps.node:
        return None
    stats = await h.client.node.node_get_volume_stats(_stats_req(volume_id, target, staging),
                                                      timeout=h.client.timeout)
    size = _usage(stats, csi.VolumeUsageUnit.BYTES)
    assert size is not None, f"no BYTES usage reported: {stats.usage!r}"
    return size.total


async def test_node_expand_after_publish_grows_what_the_workload_sees(h: Harness) -> None:
    h.need_node(NRpc.EXPAND_VOLUME)
    if not h.caps.online_expansion:
        pytest.skip("plugin does not advertise ONLINE volume expansion")
    att = await h.attach(await h.create_volume())
    before = await _bytes_total(h, att.volume.volume_id, att.target_path, att.staging_path)
    new_size = h.grown_size(att.volume)
    if h.caps.has_controller and CRpc.EXPAND_VOLUME in h.caps.controller:
        creq = csi.ControllerExpandVolumeRequest(
            volume_id=att.volume.volume_id, capacity_range=csi.CapacityRange(required_bytes=new_size),
            secrets=dict(h.config.secrets), volume_capability=h.capability())
        creply = await h.client.controller.controller_expand_volume(creq, timeout=h.client.timeout)
        assert creply.capacity_bytes >= new_size
    req = _node_expand_req(h, att.volume.volume_id, att.target_path, att.staging_path, new_size)
    reply = await h.client.node.node_expand_volume(req, timeout=h.client.timeout)
    assert reply.capacity_bytes == 0 or reply.capacity_bytes >= new_size
    again = await h.client.node.node_expand_volume(req, timeout=h.client.timeout)
    assert again.capacity_bytes == reply.capacity_bytes, "repeating the same NodeExpandVolume changed the size"
    after = await _bytes_total(h, att.volume.volume_id, att.target_path, att.staging_path)
    if before is not None and after is not None:
        assert after > before, f"after growing to {new_size} bytes the workload still sees {after} bytes"
