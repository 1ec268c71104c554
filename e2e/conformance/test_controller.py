"""Controller service: capabilities, volumes, validation, listing, capacity, publishing, expansion."""

from __future__ import annotations

import betterproto2
import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e.conformance.client import CRpc
from e2e.conformance.harness import Harness
from e2e.conformance.oracle import expect_code

pytestmark = pytest.mark.anyio

INVALID = Status.INVALID_ARGUMENT
# Spec: names may be up to 128 bytes; a plugin MUST accept that length.
MAX_NAME_BYTES = 128


# ---- ControllerGetCapabilities -------------------------------------------------------------------


async def test_controller_capabilities_are_well_formed(h: Harness) -> None:
    h.need_controller()
    reply = await h.client.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest(),
                                                                  timeout=h.client.timeout)
    for cap in reply.capabilities:
        assert betterproto2.which_one_of(cap, "type")[0] == "rpc", f"capability without rpc: {cap!r}"
        assert cap.rpc is not None
        assert cap.rpc.type != CRpc.UNKNOWN, "UNKNOWN controller capability advertised"


# ---- CreateVolume ---------------------------------------------------------------------------------


async def test_create_volume_without_name_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    req = await h.create_request("")
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), INVALID,
                      on_success=h.register_volume)


async def test_create_volume_without_capabilities_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    req = await h.create_request(h.unique_name("nocaps"))
    req.volume_capabilities = []
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), INVALID,
                      on_success=h.register_volume)


async def test_create_volume_with_capability_lacking_access_type_is_invalid(h: Harness) -> None:
    """Spec: a VolumeCapability's access_type oneof is REQUIRED (csi-sanity does not check this)."""
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    req = await h.create_request(h.unique_name("noaccesstype"))
    req.volume_capabilities = [csi.VolumeCapability(access_mode=h.capability().access_mode)]
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), INVALID,
                      on_success=h.register_volume)


async def test_create_volume_with_capability_lacking_access_mode_is_invalid(h: Harness) -> None:
    """Spec: access_mode is REQUIRED in every VolumeCapability (csi-sanity does not check this)."""
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    req = await h.create_request(h.unique_name("noaccessmode"))
    cap = h.capability()
    cap.access_mode = None
    req.volume_capabilities = [cap]
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), INVALID,
                      on_success=h.register_volume)


async def test_create_volume_without_capacity_range(h: Harness) -> None:
    volume = await h.create_volume(size_bytes=0)
    assert volume.capacity_bytes >= 0


async def test_create_volume_with_capacity_gets_at_least_that_much(h: Harness) -> None:
    volume = await h.create_volume()
    # Zero means "unknown" in the spec; anything else must honour required_bytes.
    assert volume.capacity_bytes == 0 or volume.capacity_bytes >= h.config.volume_size_bytes


async def test_create_volume_reports_topology_when_constrained(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    topology = await h.node_topology()
    if topology is None:
        pytest.skip("plugin advertises no VOLUME_ACCESSIBILITY_CONSTRAINTS or the node reports no topology")
    volume = await h.create_volume()
    assert volume.accessible_topology, "topology-constrained plugin returned a volume without accessible_topology"
    assert any(t.segments == topology.segments for t in volume.accessible_topology), (
        f"volume topology {[t.segments for t in volume.accessible_topology]} excludes the requisite "
        f"{topology.segments}"
    )


async def test_create_volume_same_name_same_size_is_idempotent(h: Harness) -> None:
    name = h.unique_name("idem")
    first = await h.create_volume(name)
    second = await h.create_volume(name)
    assert second.volume_id == first.volume_id
    assert second.capacity_bytes == first.capacity_bytes


async def test_create_volume_same_name_other_size_already_exists(h: Harness) -> None:
    name = h.unique_name("conflict")
    first = await h.create_volume(name)
    bigger = 2 * max(first.capacity_bytes, h.config.volume_size_bytes)
    req = await h.create_request(name, bigger)
    req.capacity_range = csi.CapacityRange(required_bytes=bigger, limit_bytes=bigger)
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), Status.ALREADY_EXISTS,
                      on_success=h.register_volume)


async def test_create_volume_accepts_maximum_length_name(h: Harness) -> None:
    prefix = h.unique_name("max")
    name = prefix + "x" * (MAX_NAME_BYTES - len(prefix))
    volume = await h.create_volume(name)
    assert volume.volume_id


async def test_create_volume_from_missing_snapshot_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CREATE_DELETE_SNAPSHOT)
    req = await h.create_request(h.unique_name("fromgone"))
    snapshot_id = await h.missing_snapshot_id()
    req.volume_content_source = csi.VolumeContentSource(
        snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot_id))
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), Status.NOT_FOUND,
                      on_success=h.register_volume)


async def test_create_volume_from_missing_volume_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CLONE_VOLUME)
    missing = await h.missing_volume_id()
    req = await h.create_request(h.unique_name("clonegone"))
    req.volume_content_source = csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=missing))
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), Status.NOT_FOUND,
                      on_success=h.register_volume)


async def test_create_volume_clone_of_existing_volume(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CLONE_VOLUME)
    source = await h.create_volume()
    clone = await h.create_volume(
        source=csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=source.volume_id)))
    assert clone.volume_id != source.volume_id
    assert clone.content_source is not None, "a cloned volume MUST report its content_source"
    assert clone.content_source.volume is not None
    assert clone.content_source.volume.volume_id == source.volume_id


# ---- DeleteVolume ---------------------------------------------------------------------------------


async def test_delete_volume_without_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    req = csi.DeleteVolumeRequest(secrets=dict(h.config.secrets))
    await expect_code(h.client.controller.delete_volume(req, timeout=h.client.timeout), INVALID)


async def test_delete_volume_of_unknown_id_succeeds(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    await h.delete_volume(await h.missing_volume_id())


async def test_delete_volume_twice_succeeds(h: Harness) -> None:
    volume = await h.create_volume()
    await h.delete_volume(volume.volume_id)
    await h.delete_volume(volume.volume_id)


# ---- ValidateVolumeCapabilities -------------------------------------------------------------------


def _validate(h: Harness, volume: csi.Volume | None, caps: list[csi.VolumeCapability] | None = None,
              volume_id: str | None = None) -> csi.ValidateVolumeCapabilitiesRequest:
    return csi.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id if volume is not None else (volume_id or ""),
        volume_context=dict(volume.volume_context) if volume is not None else {},
        volume_capabilities=[h.capability()] if caps is None else caps,
        parameters=dict(h.config.parameters),
        secrets=dict(h.config.secrets),
    )


async def test_validate_capabilities_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_controller()
    req = _validate(h, None)
    await expect_code(h.client.controller.validate_volume_capabilities(req, timeout=h.client.timeout), INVALID)


async def test_validate_capabilities_without_capabilities_is_invalid(h: Harness) -> None:
    volume = await h.create_volume()
    req = _validate(h, volume, caps=[])
    await expect_code(h.client.controller.validate_volume_capabilities(req, timeout=h.client.timeout), INVALID)


async def test_validate_capabilities_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_controller()
    req = _validate(h, None, volume_id=await h.missing_volume_id())
    await expect_code(h.client.controller.validate_volume_capabilities(req, timeout=h.client.timeout),
                      Status.NOT_FOUND)


async def test_validate_capabilities_confirms_the_created_capability(h: Harness) -> None:
    volume = await h.create_volume()
    reply = await h.client.controller.validate_volume_capabilities(_validate(h, volume), timeout=h.client.timeout)
    assert reply.confirmed is not None, f"capability the volume was created with not confirmed: {reply.message!r}"
    assert len(reply.confirmed.volume_capabilities) == 1


# ---- ListVolumes ----------------------------------------------------------------------------------


async def _list_ids(h: Harness, max_entries: int = 0, token: str = "") -> tuple[list[str], str]:
    req = csi.ListVolumesRequest(max_entries=max_entries, starting_token=token)
    reply = await h.client.controller.list_volumes(req, timeout=h.client.timeout)
    ids = [e.volume.volume_id for e in reply.entries if e.volume is not None]
    assert len(ids) == len(reply.entries), "ListVolumes returned an entry without a volume"
    if max_entries:
        assert len(ids) <= max_entries, f"asked for at most {max_entries} entries, got {len(ids)}"
    return ids, reply.next_token


async def _list_all_ids(h: Harness, page: int) -> list[str]:
    ids, token = await _list_ids(h, page)
    for _ in range(10_000):
        if not token:
            return ids
        more, token = await _list_ids(h, page, token)
        ids += more
    pytest.fail("ListVolumes paging never ended")


async def test_list_volumes_answers(h: Harness) -> None:
    h.need_controller(CRpc.LIST_VOLUMES)
    ids, _ = await _list_ids(h)
    assert len(ids) == len(set(ids)), "ListVolumes returned a volume twice"


async def test_list_volumes_shows_created_and_hides_deleted(h: Harness) -> None:
    h.need_controller(CRpc.LIST_VOLUMES, CRpc.CREATE_DELETE_VOLUME)
    volume = await h.create_volume()
    listed = await _list_all_ids(h, 0)
    assert volume.volume_id in listed
    await h.delete_volume(volume.volume_id)
    listed = await _list_all_ids(h, 0)
    assert volume.volume_id not in listed


async def test_list_volumes_with_invalid_token_is_aborted(h: Harness) -> None:
    h.need_controller(CRpc.LIST_VOLUMES)
    req = csi.ListVolumesRequest(starting_token="conformance-not-a-token")
    await expect_code(h.client.controller.list_volumes(req, timeout=h.client.timeout), Status.ABORTED)


async def test_list_volumes_with_negative_max_entries_is_invalid(h: Harness) -> None:
    """Spec: max_entries MUST NOT be negative (csi-sanity does not check this)."""
    h.need_controller(CRpc.LIST_VOLUMES)
    req = csi.ListVolumesRequest(max_entries=-1)
    await expect_code(h.client.controller.list_volumes(req, timeout=h.client.timeout), INVALID)


async def test_list_volumes_pages_cover_everything_once(h: Harness) -> None:
    h.need_controller(CRpc.LIST_VOLUMES, CRpc.CREATE_DELETE_VOLUME)
    ours = {(await h.create_volume()).volume_id for _ in range(3)}
    everything, token = await _list_ids(h)
    assert not token, "an unlimited ListVolumes must return everything and no next_token"
    paged = await _list_all_ids(h, 1)
    assert len(paged) == len(set(paged)), "paging returned a volume twice"
    assert set(paged) == set(everything)
    assert ours <= set(paged)


async def _three_more_volumes(h: Harness) -> list[str]:
    """Create three volumes; return every volume the plugin lists then (those and any others)."""
    h.need_controller(CRpc.LIST_VOLUMES, CRpc.CREATE_DELETE_VOLUME)
    for _ in range(3):
        await h.create_volume()
    return (await _list_ids(h))[0]


async def test_list_volumes_sets_next_token_when_more_remain(h: Harness) -> None:
    total = len(await _three_more_volumes(h))
    page, token = await _list_ids(h, 2)
    assert len(page) == 2
    assert total > 2
    assert token, "more entries remain but next_token is empty"


async def test_list_volumes_tolerates_volumes_created_between_pages(h: Harness) -> None:
    """Entries listed before a change are not repeated; entries present throughout are not lost."""
    before = set(await _three_more_volumes(h))
    first, token = await _list_ids(h, 2)
    assert token, "more entries remain but next_token is empty"
    added = await h.create_volume()
    rest = list(first)
    while token:
        more, token = await _list_ids(h, 2, token)
        rest += more
    assert len(rest) == len(set(rest)), "a volume was listed twice across pages"
    assert before <= set(rest), f"volumes present throughout were lost: {before - set(rest)}"
    assert set(rest) <= before | {added.volume_id}



async def test_list_volumes_reports_published_nodes(h: Harness) -> None:
    h.need_controller(CRpc.LIST_VOLUMES, CRpc.PUBLISH_UNPUBLISH_VOLUME, CRpc.LIST_VOLUMES_PUBLISHED_NODES)
    volume = await h.create_volume()
    node_id = await h.node_id()
    await h.controller_publish(volume, node_id)
    reply = await h.client.controller.list_volumes(csi.ListVolumesRequest(), timeout=h.client.timeout)
    entry = next((e for e in reply.entries if e.volume is not None and e.volume.volume_id == volume.volume_id), None)
    assert entry is not None, "published volume missing from ListVolumes"
    assert entry.status is not None, "LIST_VOLUMES_PUBLISHED_NODES advertised but the entry has no status"
    assert node_id in entry.status.published_node_ids

# ---- GetCapacity ----------------------------------------------------------------------------------


async def test_get_capacity_without_arguments(h: Harness) -> None:
    h.need_controller(CRpc.GET_CAPACITY)
    reply = await h.client.controller.get_capacity(csi.GetCapacityRequest(), timeout=h.client.timeout)
    assert reply.available_capacity >= 0


async def test_get_capacity_for_the_suite_capability(h: Harness) -> None:
    h.need_controller(CRpc.GET_CAPACITY)
    req = csi.GetCapacityRequest(volume_capabilities=[h.capability()], parameters=dict(h.config.parameters),
                                 accessible_topology=await h.node_topology())
    reply = await h.client.controller.get_capacity(req, timeout=h.client.timeout)
    assert reply.available_capacity >= 0
    if reply.maximum_volume_size is not None:
        assert reply.maximum_volume_size >= 0
    if reply.minimum_volume_size is not None:
        assert reply.minimum_volume_size >= 0


# ---- ControllerPublishVolume / ControllerUnpublishVolume ------------------------------------------


def _publish_req(h: Harness, volume_id: str, node_id: str, with_cap: bool = True,
                 readonly: bool = False) -> csi.ControllerPublishVolumeRequest:
    return csi.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=node_id, volume_capability=h.capability() if with_cap else None,
        readonly=readonly, secrets=dict(h.config.secrets),
    )


async def test_controller_publish_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    req = _publish_req(h, "", await h.node_id())
    await expect_code(h.client.controller.controller_publish_volume(req, timeout=h.client.timeout), INVALID)


async def test_controller_publish_without_node_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    volume = await h.create_volume()
    req = _publish_req(h, volume.volume_id, "")
    await expect_code(h.client.controller.controller_publish_volume(req, timeout=h.client.timeout), INVALID)


async def test_controller_publish_without_capability_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    volume = await h.create_volume()
    req = _publish_req(h, volume.volume_id, await h.node_id(), with_cap=False)
    await expect_code(h.client.controller.controller_publish_volume(req, timeout=h.client.timeout), INVALID)


async def test_controller_publish_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    req = _publish_req(h, await h.missing_volume_id(), await h.node_id())
    await expect_code(h.client.controller.controller_publish_volume(req, timeout=h.client.timeout),
                      Status.NOT_FOUND)


async def test_controller_publish_to_unknown_node_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    volume = await h.create_volume()
    node_id = h.unique_name("no-such-node")
    h.tracker.controller_publications[(volume.volume_id, node_id)] = None
    req = _publish_req(h, volume.volume_id, node_id)
    await expect_code(h.client.controller.controller_publish_volume(req, timeout=h.client.timeout),
                      Status.NOT_FOUND)


async def test_controller_publish_is_idempotent(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    volume = await h.create_volume()
    node_id = await h.node_id()
    first = await h.controller_publish(volume, node_id)
    second = await h.controller_publish(volume, node_id)
    assert first == second, "a repeated identical ControllerPublishVolume changed the publish_context"


async def test_controller_publish_incompatible_repeat_already_exists(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME, CRpc.PUBLISH_READONLY)
    volume = await h.create_volume()
    node_id = await h.node_id()
    await h.controller_publish(volume, node_id, readonly=False)
    req = _publish_req(h, volume.volume_id, node_id, readonly=True)
    await expect_code(h.client.controller.controller_publish_volume(req, timeout=h.client.timeout),
                      Status.ALREADY_EXISTS)


async def test_controller_unpublish_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    req = csi.ControllerUnpublishVolumeRequest(node_id=await h.node_id(), secrets=dict(h.config.secrets))
    await expect_code(h.client.controller.controller_unpublish_volume(req, timeout=h.client.timeout), INVALID)


async def test_controller_unpublish_of_unpublished_volume_succeeds(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    volume = await h.create_volume()
    await h.controller_unpublish(volume.volume_id, await h.node_id())


async def test_controller_publish_then_unpublish_twice(h: Harness) -> None:
    h.need_controller(CRpc.PUBLISH_UNPUBLISH_VOLUME)
    volume = await h.create_volume()
    node_id = await h.node_id()
    await h.controller_publish(volume, node_id)
    await h.controller_unpublish(volume.volume_id, node_id)
    await h.controller_unpublish(volume.volume_id, node_id)


# ---- ControllerGetVolume --------------------------------------------------------------------------


async def test_controller_get_volume_without_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.GET_VOLUME)
    await expect_code(h.client.controller.controller_get_volume(csi.ControllerGetVolumeRequest(),
                                                                timeout=h.client.timeout), INVALID)


async def test_controller_get_volume_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.GET_VOLUME)
    req = csi.ControllerGetVolumeRequest(volume_id=await h.missing_volume_id())
    await expect_code(h.client.controller.controller_get_volume(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def test_controller_get_volume_describes_the_volume(h: Harness) -> None:
    h.need_controller(CRpc.GET_VOLUME)
    volume = await h.create_volume()
    reply = await h.client.controller.controller_get_volume(
        csi.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=h.client.timeout)
    assert reply.volume is not None
    assert reply.volume.volume_id == volume.volume_id
    assert reply.volume.capacity_bytes == volume.capacity_bytes


async def test_controller_get_volume_lists_published_node(h: Harness) -> None:
    h.need_controller(CRpc.GET_VOLUME, CRpc.PUBLISH_UNPUBLISH_VOLUME, CRpc.LIST_VOLUMES_PUBLISHED_NODES)
    volume = await h.create_volume()
    node_id = await h.node_id()
    await h.controller_publish(volume, node_id)
    reply = await h.client.controller.controller_get_volume(
        csi.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=h.client.timeout)
    assert reply.status is not None, "status is REQUIRED in ControllerGetVolumeResponse"
    assert node_id in reply.status.published_node_ids
    await h.controller_unpublish(volume.volume_id, node_id)
    reply = await h.client.controller.controller_get_volume(
        csi.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=h.client.timeout)
    assert reply.status is not None
    assert node_id not in reply.status.published_node_ids


# ---- ControllerExpandVolume -----------------------------------------------------------------------


def _expand_req(h: Harness, volume_id: str, size: int | None) -> csi.ControllerExpandVolumeRequest:
    return csi.ControllerExpandVolumeRequest(
        volume_id=volume_id,
        capacity_range=csi.CapacityRange(required_bytes=size) if size is not None else None,
        secrets=dict(h.config.secrets), volume_capability=h.capability(),
    )


async def test_controller_expand_without_volume_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.EXPAND_VOLUME)
    req = _expand_req(h, "", h.config.expand_size_bytes)
    await expect_code(h.client.controller.controller_expand_volume(req, timeout=h.client.timeout), INVALID)


async def test_controller_expand_without_capacity_range_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.EXPAND_VOLUME)
    volume = await h.create_volume()
    req = _expand_req(h, volume.volume_id, None)
    await expect_code(h.client.controller.controller_expand_volume(req, timeout=h.client.timeout), INVALID)


async def test_controller_expand_of_unknown_volume_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.EXPAND_VOLUME)
    req = _expand_req(h, await h.missing_volume_id(), h.config.expand_size_bytes)
    await expect_code(h.client.controller.controller_expand_volume(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def test_controller_expand_grows_the_volume(h: Harness) -> None:
    h.need_controller(CRpc.EXPAND_VOLUME)
    volume = await h.create_volume()
    new_size = h.grown_size(volume)
    req = _expand_req(h, volume.volume_id, new_size)
    reply = await h.client.controller.controller_expand_volume(req, timeout=h.client.timeout)
    assert reply.capacity_bytes >= new_size
    again = await h.client.controller.controller_expand_volume(req, timeout=h.client.timeout)
    assert again.capacity_bytes == reply.capacity_bytes, "repeating the same expansion changed the size"
    if CRpc.GET_VOLUME in h.caps.controller:
        got = await h.client.controller.controller_get_volume(
            csi.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=h.client.timeout)
        assert got.volume is not None
        assert got.volume.capacity_bytes >= new_size
