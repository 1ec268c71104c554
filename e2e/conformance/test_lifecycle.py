"""Whole volume lifecycles as a CO drives them, with data written and read back through the node."""

from __future__ import annotations

import anyio
import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e.conformance.client import CRpc, NRpc
from e2e.conformance.config import AccessType
from e2e.conformance.data import is_block_device, read_marker, write_is_refused, write_random_marker
from e2e.conformance.harness import Harness, Mode
from e2e.conformance.oracle import expect_code

pytestmark = pytest.mark.anyio


async def _check_published(h: Harness, target: str) -> None:
    path = anyio.Path(target)
    assert await path.exists(), f"NodePublishVolume answered OK but {target} does not exist"
    if h.config.access is AccessType.BLOCK:
        assert await is_block_device(target), f"{target} is not a block device"
    else:
        assert await path.is_dir(), f"{target} is not a directory"


async def test_full_lifecycle(h: Harness) -> None:
    """create, ControllerPublish, stage, publish, I/O, stats, unpublish, unstage, ControllerUnpublish, delete."""
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    h.need_node()
    volume = await h.create_volume()
    att = await h.attach(volume)
    await _check_published(h, att.target_path)
    payload = await write_random_marker(att.target_path, h.config.access, 64)
    assert await read_marker(att.target_path, h.config.access, len(payload)) == payload
    if NRpc.GET_VOLUME_STATS in h.caps.node:
        req = csi.NodeGetVolumeStatsRequest(volume_id=volume.volume_id, volume_path=att.target_path,
                                            staging_target_path=att.staging_path)
        stats = await h.client.node.node_get_volume_stats(req, timeout=h.client.timeout)
        assert stats.usage, "NodeGetVolumeStats reported no usage"
    await h.unpublish(volume.volume_id, att.target_path)
    assert not await anyio.Path(att.target_path).exists(), (
        "NodeUnpublishVolume MUST delete the target path it created")
    if att.staging_path:
        await h.unstage(volume.volume_id, att.staging_path)
    if h.controller_publishes:
        await h.controller_unpublish(volume.volume_id, att.node_id)
    await h.delete_volume(volume.volume_id)


async def test_every_step_is_idempotent(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    h.need_node()
    name = h.unique_name("idem")
    volume = await h.create_volume(name)
    assert (await h.create_volume(name)).volume_id == volume.volume_id
    node_id = await h.node_id()
    context: dict[str, str] = {}
    if h.controller_publishes:
        context = await h.controller_publish(volume, node_id)
        assert await h.controller_publish(volume, node_id) == context
    staging = ""
    if h.stages:
        staging = await h.new_staging_path()
        await h.stage(volume, staging, context)
        await h.stage(volume, staging, context)
    target = await h.new_target_path()
    await h.publish(volume, staging, target, context)
    await h.publish(volume, staging, target, context)
    await _check_published(h, target)
    await h.unpublish(volume.volume_id, target)
    await h.unpublish(volume.volume_id, target)
    if staging:
        await h.unstage(volume.volume_id, staging)
        await h.unstage(volume.volume_id, staging)
    if h.controller_publishes:
        await h.controller_unpublish(volume.volume_id, node_id)
        await h.controller_unpublish(volume.volume_id, node_id)
    await h.delete_volume(volume.volume_id)
    await h.delete_volume(volume.volume_id)


async def test_data_survives_detach_and_reattach(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    h.need_node()
    volume = await h.create_volume()
    att = await h.attach(volume)
    payload = await write_random_marker(att.target_path, h.config.access, 128)
    await h.detach(att)
    again = await h.attach(volume)
    assert await read_marker(again.target_path, h.config.access, len(payload)) == payload


async def test_two_targets_of_one_staged_volume_share_data(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.SINGLE_NODE_MULTI_WRITER)
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME, NRpc.SINGLE_NODE_MULTI_WRITER)
    h.access_mode = Mode.SINGLE_NODE_MULTI_WRITER
    att = await h.attach(await h.create_volume())
    second = await h.new_target_path()
    await h.publish(att.volume, att.staging_path, second, att.publish_context)
    payload = await write_random_marker(att.target_path, h.config.access, 32)
    assert await read_marker(second, h.config.access, len(payload)) == payload


async def test_single_writer_refuses_a_second_target(h: Harness) -> None:
    """Spec (SINGLE_NODE_MULTI_WRITER table): SINGLE_NODE_SINGLE_WRITER at a second target is FAILED_PRECONDITION."""
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.SINGLE_NODE_MULTI_WRITER)
    h.need_node(NRpc.SINGLE_NODE_MULTI_WRITER)
    h.access_mode = Mode.SINGLE_NODE_SINGLE_WRITER
    att = await h.attach(await h.create_volume())
    second = await h.new_target_path()
    h.tracker.publications[(att.volume.volume_id, second)] = None
    req = h.publish_request(att.volume, att.staging_path, second, att.publish_context)
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), Status.FAILED_PRECONDITION)


async def test_readonly_publish_refuses_writes(h: Harness) -> None:
    h.need_access(AccessType.MOUNT)
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    h.need_node()
    volume = await h.create_volume()
    writable = await h.attach(volume)
    payload = await write_random_marker(writable.target_path, h.config.access, 16)
    readonly = await h.new_target_path()
    await h.publish(volume, writable.staging_path, readonly, writable.publish_context, readonly=True)
    assert await read_marker(readonly, h.config.access, len(payload)) == payload
    assert await write_is_refused(readonly), "a readonly publish accepted a write"


async def test_publish_at_same_target_with_other_readonly_already_exists(h: Harness) -> None:
    """Spec: a volume published at target_path but incompatible with the new request is ALREADY_EXISTS."""
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    h.need_node()
    att = await h.attach(await h.create_volume())
    req = h.publish_request(att.volume, att.staging_path, att.target_path, att.publish_context, readonly=True)
    await expect_code(h.client.node.node_publish_volume(req, timeout=h.client.timeout), Status.ALREADY_EXISTS)



async def _write_then_detach(h: Harness, volume: csi.Volume) -> bytes:
    att = await h.attach(volume)
    payload = await write_random_marker(att.target_path, h.config.access, 64)
    await h.detach(att)
    return payload


async def test_volume_restored_from_snapshot_holds_the_snapshot_data(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CREATE_DELETE_SNAPSHOT)
    h.need_node()
    volume = await h.create_volume()
    payload = await _write_then_detach(h, volume)
    snapshot = await h.create_snapshot(volume.volume_id)
    # Change the source afterwards: the restore must show the data as it was at snapshot time.
    await _write_then_detach(h, volume)
    source = csi.VolumeContentSource(snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot.snapshot_id))
    restored = await h.create_volume(source=source)
    att = await h.attach(restored)
    assert await read_marker(att.target_path, h.config.access, len(payload)) == payload


async def test_cloned_volume_holds_the_source_data(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CLONE_VOLUME)
    h.need_node()
    volume = await h.create_volume()
    payload = await _write_then_detach(h, volume)
    clone = await h.create_volume(
        source=csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=volume.volume_id)))
    att = await h.attach(clone)
    assert await read_marker(att.target_path, h.config.access, len(payload)) == payload


async def test_stage_at_same_path_with_other_filesystem_already_exists(h: Harness) -> None:
    """Staging again at the same path with another fs_type must fail.

    Two rows of the spec's NodeStageVolume table fit: ALREADY_EXISTS (staged at this path but
    incompatible) and FAILED_PRECONDITION (capability not supported by the volume, which already
    holds another filesystem). Either is conformant; success would be wrong.
    """
    h.need_access(AccessType.MOUNT)
    h.need_controller(CRpc.CREATE_DELETE_VOLUME)
    h.need_node(NRpc.STAGE_UNSTAGE_VOLUME)
    att = await h.attach(await h.create_volume())
    req = h.stage_request(att.volume, att.staging_path, att.publish_context)
    assert req.volume_capability is not None and req.volume_capability.mount is not None
    req.volume_capability.mount.fs_type = "xfs" if h.config.fs_type != "xfs" else "ext4"
    await expect_code(h.client.node.node_stage_volume(req, timeout=h.client.timeout),
                      Status.ALREADY_EXISTS, Status.FAILED_PRECONDITION)
