"""Argument checks come before any lookup: a malformed request is INVALID_ARGUMENT whatever volume it names.

csi-sanity sends requests that lack one required field and name a volume that does not exist; a plugin that looks
the volume up first answers NOT_FOUND and fails. Here every RPC that names a volume, and every one of its required
fields, is sent without that field and with an id the plugin never issued and one it issued and then deleted.
The volume_id-less rows are the specs of test_controller.py and test_node.py.

A path where the volume is not published is NOT_FOUND for NodeGetVolumeStats (the spec's "does not exist on the
specified volume_path"), a relative one included: csi-sanity asks with ``some/path``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from grpclib.const import Status

from csi.gen.csi import v1 as csi
from e2e.conformance.client import CRpc, NRpc
from e2e.conformance.harness import Harness
from e2e.conformance.oracle import expect_code

pytestmark = pytest.mark.anyio

#: Well-formed for the wire, never issued by any plugin (csi-sanity's ids look like this).
NEVER_ISSUED_VOLUME = "conformance-never-issued-volume"
#: csi-sanity's path for "a path where the volume is not".
RELATIVE_PATH = "some/path"


@pytest.fixture(params=["never-issued", "deleted"])
async def unknown_id(request: pytest.FixtureRequest, h: Harness) -> str:
    """A volume id the plugin does not know: one it never issued, or one it issued and deleted."""
    if request.param == "never-issued":
        return NEVER_ISSUED_VOLUME
    return await h.missing_volume_id()


@dataclass(frozen=True)
class Row:
    """One RPC sent without one required field; ``send`` builds and sends it for an unknown volume id."""

    rpc: str
    missing: str
    gate: Callable[[Harness], None]
    send: Callable[[Harness, str], Awaitable[object]]

    @property
    def id(self) -> str:
        return f"{self.rpc}-without-{self.missing}"


def controller(*rpcs: CRpc) -> Callable[[Harness], None]:
    return lambda h: h.need_controller(*rpcs)


def node(*rpcs: NRpc) -> Callable[[Harness], None]:
    return lambda h: h.need_node(*rpcs)


async def _publish(h: Harness, vid: str, missing: str) -> object:
    req = csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=await h.node_id(),
                                             volume_capability=h.capability(), secrets=dict(h.config.secrets))
    setattr(req, missing, None if missing == "volume_capability" else "")
    return await h.client.controller.controller_publish_volume(req, timeout=h.client.timeout)


async def _validate(h: Harness, vid: str) -> object:
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=vid, secrets=dict(h.config.secrets))
    return await h.client.controller.validate_volume_capabilities(req, timeout=h.client.timeout)


async def _controller_expand(h: Harness, vid: str) -> object:
    req = csi.ControllerExpandVolumeRequest(volume_id=vid, volume_capability=h.capability(),
                                            secrets=dict(h.config.secrets))
    return await h.client.controller.controller_expand_volume(req, timeout=h.client.timeout)


async def _snapshot(h: Harness, vid: str) -> object:
    req = csi.CreateSnapshotRequest(source_volume_id=vid, secrets=dict(h.config.secrets))
    return await h.client.controller.create_snapshot(req, timeout=h.client.timeout)


async def _clone(h: Harness, vid: str, missing: str) -> object:
    req = await h.create_request("" if missing == "name" else h.unique_name("clone"))
    if missing == "volume_capabilities":
        req.volume_capabilities = []
    req.volume_content_source = csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=vid))
    return await h.client.controller.create_volume(req, timeout=h.client.timeout)


async def _stage(h: Harness, vid: str, missing: str) -> object:
    req = csi.NodeStageVolumeRequest(volume_id=vid, volume_capability=h.capability(), secrets=dict(h.config.secrets))
    if missing == "volume_capability":
        req.volume_capability = None
        req.staging_target_path = await h.new_staging_path()
    return await h.client.node.node_stage_volume(req, timeout=h.client.timeout)


async def _unstage(h: Harness, vid: str) -> object:
    req = csi.NodeUnstageVolumeRequest(volume_id=vid)
    return await h.client.node.node_unstage_volume(req, timeout=h.client.timeout)


async def _node_publish(h: Harness, vid: str, missing: str) -> object:
    """``volume_capability``: csi-sanity's own request (no staging path either); ``target_path``: staged as a CO
    would send it."""
    req = csi.NodePublishVolumeRequest(volume_id=vid, volume_capability=h.capability(),
                                       secrets=dict(h.config.secrets))
    if missing == "volume_capability":
        req.volume_capability = None
        req.target_path = await h.new_target_path()
    elif h.stages:
        req.staging_target_path = await h.new_staging_path()
    return await h.client.node.node_publish_volume(req, timeout=h.client.timeout)


async def _unpublish(h: Harness, vid: str) -> object:
    req = csi.NodeUnpublishVolumeRequest(volume_id=vid)
    return await h.client.node.node_unpublish_volume(req, timeout=h.client.timeout)


async def _stats(h: Harness, vid: str) -> object:
    req = csi.NodeGetVolumeStatsRequest(volume_id=vid)
    return await h.client.node.node_get_volume_stats(req, timeout=h.client.timeout)


async def _node_expand(h: Harness, vid: str) -> object:
    req = csi.NodeExpandVolumeRequest(volume_id=vid, volume_capability=h.capability(),
                                      capacity_range=csi.CapacityRange(required_bytes=h.config.expand_size_bytes))
    return await h.client.node.node_expand_volume(req, timeout=h.client.timeout)


ROWS = [
    Row("ControllerPublishVolume", "node_id", controller(CRpc.PUBLISH_UNPUBLISH_VOLUME),
        lambda h, vid: _publish(h, vid, "node_id")),
    Row("ControllerPublishVolume", "volume_capability", controller(CRpc.PUBLISH_UNPUBLISH_VOLUME),
        lambda h, vid: _publish(h, vid, "volume_capability")),
    Row("ValidateVolumeCapabilities", "volume_capabilities", controller(), _validate),
    Row("ControllerExpandVolume", "capacity_range", controller(CRpc.EXPAND_VOLUME), _controller_expand),
    Row("CreateSnapshot", "name", controller(CRpc.CREATE_DELETE_SNAPSHOT), _snapshot),
    Row("CreateVolume", "name", controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CLONE_VOLUME),
        lambda h, vid: _clone(h, vid, "name")),
    Row("CreateVolume", "volume_capabilities", controller(CRpc.CREATE_DELETE_VOLUME, CRpc.CLONE_VOLUME),
        lambda h, vid: _clone(h, vid, "volume_capabilities")),
    Row("NodeStageVolume", "staging_target_path", node(NRpc.STAGE_UNSTAGE_VOLUME),
        lambda h, vid: _stage(h, vid, "staging_target_path")),
    Row("NodeStageVolume", "volume_capability", node(NRpc.STAGE_UNSTAGE_VOLUME),
        lambda h, vid: _stage(h, vid, "volume_capability")),
    Row("NodeUnstageVolume", "staging_target_path", node(NRpc.STAGE_UNSTAGE_VOLUME), _unstage),
    Row("NodePublishVolume", "target_path", node(), lambda h, vid: _node_publish(h, vid, "target_path")),
    Row("NodePublishVolume", "volume_capability", node(), lambda h, vid: _node_publish(h, vid, "volume_capability")),
    Row("NodeUnpublishVolume", "target_path", node(), _unpublish),
    Row("NodeGetVolumeStats", "volume_path", node(NRpc.GET_VOLUME_STATS), _stats),
    Row("NodeExpandVolume", "volume_path", node(NRpc.EXPAND_VOLUME), _node_expand),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_a_missing_required_field_is_invalid_whatever_volume_is_named(h: Harness, row: Row,
                                                                           unknown_id: str) -> None:
    row.gate(h)
    await expect_code(row.send(h, unknown_id), Status.INVALID_ARGUMENT, on_success=_fail_registering(h))


def _fail_registering(h: Harness) -> Callable[[object], Awaitable[None]]:
    """Whatever an unexpected success created, the tracker removes."""
    async def register(reply: object) -> None:
        if isinstance(reply, csi.CreateVolumeResponse):
            await h.register_volume(reply)
        elif isinstance(reply, csi.CreateSnapshotResponse):
            await h.register_snapshot(reply)

    return register


# ---- a path where the volume is not ---------------------------------------------------------------------------


def _stats_req(volume_id: str, path: str) -> csi.NodeGetVolumeStatsRequest:
    return csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)


async def test_node_stats_of_an_unknown_volume_at_a_relative_path_is_not_found(h: Harness, unknown_id: str) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    await expect_code(h.client.node.node_get_volume_stats(_stats_req(unknown_id, RELATIVE_PATH),
                                                          timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_stats_at_a_relative_path_is_not_found(h: Harness) -> None:
    """csi-sanity's own request: the volume is published, but not at ``some/path``: NOT_FOUND, not malformed."""
    h.need_node(NRpc.GET_VOLUME_STATS)
    att = await h.attach(await h.create_volume())
    await expect_code(h.client.node.node_get_volume_stats(_stats_req(att.volume.volume_id, RELATIVE_PATH),
                                                          timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_stats_at_another_volumes_target_is_not_found(h: Harness) -> None:
    h.need_node(NRpc.GET_VOLUME_STATS)
    mine = await h.attach(await h.create_volume())
    theirs = await h.attach(await h.create_volume())
    for path in (theirs.target_path, theirs.staging_path):
        if path:
            await expect_code(h.client.node.node_get_volume_stats(_stats_req(mine.volume.volume_id, path),
                                                                  timeout=h.client.timeout), Status.NOT_FOUND)


async def test_node_expand_of_an_unknown_volume_at_a_relative_path_is_not_found(h: Harness, unknown_id: str) -> None:
    h.need_node(NRpc.EXPAND_VOLUME)
    req = csi.NodeExpandVolumeRequest(volume_id=unknown_id, volume_path=RELATIVE_PATH)
    await expect_code(h.client.node.node_expand_volume(req, timeout=h.client.timeout), Status.NOT_FOUND)
