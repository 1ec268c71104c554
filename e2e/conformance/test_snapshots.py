"""Snapshots: CreateSnapshot, DeleteSnapshot, ListSnapshots, GetSnapshot, volumes restored from snapshots."""

from __future__ import annotations

import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e.conformance.client import CRpc
from e2e.conformance.harness import Harness
from e2e.conformance.oracle import expect_code

pytestmark = pytest.mark.anyio

INVALID = Status.INVALID_ARGUMENT
MAX_NAME_BYTES = 128


def _snap_req(h: Harness, volume_id: str, name: str) -> csi.CreateSnapshotRequest:
    return csi.CreateSnapshotRequest(source_volume_id=volume_id, name=name, secrets=dict(h.config.secrets))


# ---- CreateSnapshot -------------------------------------------------------------------------------


async def test_create_snapshot_without_name_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    volume = await h.create_volume()
    await expect_code(h.client.controller.create_snapshot(_snap_req(h, volume.volume_id, ""),
                                                          timeout=h.client.timeout),
                      INVALID, on_success=h.register_snapshot)


async def test_create_snapshot_without_source_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    await expect_code(h.client.controller.create_snapshot(_snap_req(h, "", h.unique_name("snap")),
                                                          timeout=h.client.timeout),
                      INVALID, on_success=h.register_snapshot)


async def test_create_snapshot_describes_the_snapshot(h: Harness) -> None:
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    assert snapshot.source_volume_id == volume.volume_id
    assert snapshot.creation_time is not None, "creation_time is REQUIRED"
    assert snapshot.size_bytes >= 0


async def test_create_snapshot_same_name_same_source_is_idempotent(h: Harness) -> None:
    volume = await h.create_volume()
    name = h.unique_name("snapidem")
    first = await h.create_snapshot(volume.volume_id, name)
    second = await h.create_snapshot(volume.volume_id, name)
    assert second.snapshot_id == first.snapshot_id
    assert second.source_volume_id == volume.volume_id


async def test_create_snapshot_same_name_other_source_already_exists(h: Harness) -> None:
    one = await h.create_volume()
    other = await h.create_volume()
    name = h.unique_name("snapconflict")
    await h.create_snapshot(one.volume_id, name)
    await expect_code(h.client.controller.create_snapshot(_snap_req(h, other.volume_id, name),
                                                          timeout=h.client.timeout),
                      Status.ALREADY_EXISTS, on_success=h.register_snapshot)


async def test_create_snapshot_accepts_maximum_length_name(h: Harness) -> None:
    volume = await h.create_volume()
    prefix = h.unique_name("snapmax")
    snapshot = await h.create_snapshot(volume.volume_id, prefix + "x" * (MAX_NAME_BYTES - len(prefix)))
    assert snapshot.snapshot_id


# ---- DeleteSnapshot -------------------------------------------------------------------------------


async def test_delete_snapshot_without_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    req = csi.DeleteSnapshotRequest(secrets=dict(h.config.secrets))
    await expect_code(h.client.controller.delete_snapshot(req, timeout=h.client.timeout), INVALID)


async def test_delete_snapshot_of_unknown_id_succeeds(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    await h.delete_snapshot(await h.missing_snapshot_id())


async def test_delete_snapshot_twice_succeeds(h: Harness) -> None:
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    await h.delete_snapshot(snapshot.snapshot_id)
    await h.delete_snapshot(snapshot.snapshot_id)


# ---- ListSnapshots --------------------------------------------------------------------------------


async def _list(h: Harness, max_entries: int = 0, starting_token: str = "", snapshot_id: str = "",
                source_volume_id: str = "") -> tuple[list[csi.Snapshot], str]:
    req = csi.ListSnapshotsRequest(max_entries=max_entries, starting_token=starting_token, snapshot_id=snapshot_id,
                                   source_volume_id=source_volume_id, secrets=dict(h.config.secrets))
    reply = await h.client.controller.list_snapshots(req, timeout=h.client.timeout)
    snapshots = [e.snapshot for e in reply.entries if e.snapshot is not None]
    assert len(snapshots) == len(reply.entries), "ListSnapshots returned an entry without a snapshot"
    return snapshots, reply.next_token


async def _list_all(h: Harness, page: int) -> list[str]:
    found, token = await _list(h, max_entries=page)
    ids = [s.snapshot_id for s in found]
    for _ in range(10_000):
        if not token:
            return ids
        found, token = await _list(h, max_entries=page, starting_token=token)
        assert len(found) <= page, f"asked for at most {page} entries, got {len(found)}"
        ids += [s.snapshot_id for s in found]
    pytest.fail("ListSnapshots paging never ended")


async def test_list_snapshots_shows_created_and_hides_deleted(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    assert snapshot.snapshot_id in await _list_all(h, 0)
    await h.delete_snapshot(snapshot.snapshot_id)
    assert snapshot.snapshot_id not in await _list_all(h, 0)


async def test_list_snapshots_filters_by_snapshot_id(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    volume = await h.create_volume()
    wanted = await h.create_snapshot(volume.volume_id)
    await h.create_snapshot(volume.volume_id)
    found, _ = await _list(h, snapshot_id=wanted.snapshot_id)
    assert [s.snapshot_id for s in found] == [wanted.snapshot_id]
    assert found[0].source_volume_id == volume.volume_id


async def test_list_snapshots_of_unknown_snapshot_id_is_empty(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    found, _ = await _list(h, snapshot_id=await h.missing_snapshot_id())
    assert found == []


async def test_list_snapshots_filters_by_source_volume(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    volume = await h.create_volume()
    other = await h.create_volume()
    mine = {(await h.create_snapshot(volume.volume_id)).snapshot_id for _ in range(2)}
    await h.create_snapshot(other.volume_id)
    found, _ = await _list(h, source_volume_id=volume.volume_id)
    assert {s.snapshot_id for s in found} == mine
    assert all(s.source_volume_id == volume.volume_id for s in found)


async def test_list_snapshots_of_unknown_source_volume_is_empty(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    found, _ = await _list(h, source_volume_id=await h.missing_volume_id())
    assert found == []


async def test_list_snapshots_pages_cover_everything_once(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    volume = await h.create_volume()
    ours = {(await h.create_snapshot(volume.volume_id)).snapshot_id for _ in range(3)}
    everything, token = await _list(h)
    assert not token, "an unlimited ListSnapshots must return everything and no next_token"
    first, token = await _list(h, max_entries=2)
    assert len(first) == 2
    assert token, "more entries remain but next_token is empty"
    paged = await _list_all(h, 1)
    assert len(paged) == len(set(paged)), "paging returned a snapshot twice"
    assert set(paged) == {s.snapshot_id for s in everything}
    assert ours <= set(paged)


async def test_list_snapshots_with_invalid_token_is_aborted(h: Harness) -> None:
    h.need_controller(CRpc.LIST_SNAPSHOTS)
    req = csi.ListSnapshotsRequest(starting_token="conformance-not-a-token", secrets=dict(h.config.secrets))
    await expect_code(h.client.controller.list_snapshots(req, timeout=h.client.timeout), Status.ABORTED)


# ---- GetSnapshot ----------------------------------------------------------------------------------


async def test_get_snapshot_without_id_is_invalid(h: Harness) -> None:
    h.need_controller(CRpc.GET_SNAPSHOT)
    req = csi.GetSnapshotRequest(secrets=dict(h.config.secrets))
    await expect_code(h.client.controller.get_snapshot(req, timeout=h.client.timeout), INVALID)


async def test_get_snapshot_of_unknown_id_is_not_found(h: Harness) -> None:
    h.need_controller(CRpc.GET_SNAPSHOT)
    req = csi.GetSnapshotRequest(snapshot_id=await h.missing_snapshot_id(), secrets=dict(h.config.secrets))
    await expect_code(h.client.controller.get_snapshot(req, timeout=h.client.timeout), Status.NOT_FOUND)


async def test_get_snapshot_describes_the_snapshot(h: Harness) -> None:
    h.need_controller(CRpc.GET_SNAPSHOT)
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    req = csi.GetSnapshotRequest(snapshot_id=snapshot.snapshot_id, secrets=dict(h.config.secrets))
    reply = await h.client.controller.get_snapshot(req, timeout=h.client.timeout)
    assert reply.snapshot is not None
    assert reply.snapshot.snapshot_id == snapshot.snapshot_id
    assert reply.snapshot.source_volume_id == volume.volume_id


# ---- restore --------------------------------------------------------------------------------------


async def test_create_volume_from_snapshot(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    source = csi.VolumeContentSource(snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot.snapshot_id))
    restored = await h.create_volume(source=source)
    assert restored.content_source is not None, "a restored volume MUST report its content_source"
    assert restored.content_source.snapshot is not None
    assert restored.content_source.snapshot.snapshot_id == snapshot.snapshot_id
    assert restored.capacity_bytes == 0 or restored.capacity_bytes >= snapshot.size_bytes


async def test_create_volume_from_snapshot_same_name_is_idempotent(h: Harness) -> None:
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    source = csi.VolumeContentSource(snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot.snapshot_id))
    name = h.unique_name("restore")
    first = await h.create_volume(name, source=source)
    second = await h.create_volume(name, source=source)
    assert first.volume_id == second.volume_id


async def test_create_volume_name_reused_with_other_source_already_exists(h: Harness) -> None:
    """Spec: a name reused with a different volume_content_source is ALREADY_EXISTS."""
    h.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
    volume = await h.create_volume()
    snapshot = await h.create_snapshot(volume.volume_id)
    name = h.unique_name("reuse")
    await h.create_volume(name)
    req = await h.create_request(name)
    req.volume_content_source = csi.VolumeContentSource(
        snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot.snapshot_id))
    await expect_code(h.client.controller.create_volume(req, timeout=h.client.timeout), Status.ALREADY_EXISTS,
                      on_success=h.register_volume)
