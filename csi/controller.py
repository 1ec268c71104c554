"""CSI Controller service: validate → lock → delegate to the backend → respond."""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from backends import base, errors
from backends.ids import is_driver_snapshot_id, is_driver_volume_id
from csi import validation as v
from csi.capabilities import controller_rpcs
from csi.config import Mode
from csi.context import PUBLISH_NODE_KEY, ServiceContext, Servicer
from csi.gen.csi import v1 as csi
from csi.rpc import rpc

#: Volume-context key naming the volume's CSI name.
NAME_CONTEXT = "localcsi.dev/name"


def volume_message(vol: base.Volume, topology: dict[str, str]) -> csi.Volume:
    source = None
    if vol.source is not None:
        if vol.source.kind is base.SourceKind.SNAPSHOT:
            source = csi.VolumeContentSource(
                snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=vol.source.source_id))
        else:
            source = csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=vol.source.source_id))
    context = dict(vol.context)
    if vol.name:  # for people: ctl list and kubectl get pv -o yaml show which claim a volume is
        context.setdefault(NAME_CONTEXT, vol.name)
    return csi.Volume(
        capacity_bytes=vol.capacity_bytes,
        volume_id=vol.volume_id,
        volume_context=context,
        content_source=source,
        accessible_topology=[csi.Topology(segments=dict(topology))],
    )


def condition_message(condition: base.Condition) -> csi.VolumeCondition:
    return csi.VolumeCondition(abnormal=condition.abnormal, message=condition.message)


def snapshot_message(snap: base.Snapshot) -> csi.Snapshot:
    return csi.Snapshot(
        size_bytes=snap.size_bytes,
        snapshot_id=snap.snapshot_id,
        source_volume_id=snap.source_volume_id,
        creation_time=snap.creation_time,
        ready_to_use=snap.ready_to_use,
    )


def page(ids: list[str], starting_token: str, max_entries: int) -> tuple[int, int, str]:
    """Slice bounds for one page of sorted ids, and the next token (the last id served)."""
    start = 0
    if starting_token:
        if not (is_driver_volume_id(starting_token) or is_driver_snapshot_id(starting_token)):
            # The spec's code for a token we never handed out is ABORTED.
            raise errors.Busy(f"starting_token {starting_token[:64]!r} was not issued by this driver")
        start = bisect.bisect_right(ids, starting_token)
    end = len(ids) if max_entries == 0 else min(len(ids), start + max_entries)
    return start, end, ids[end - 1] if end < len(ids) and end > start else ""


class ControllerService(Servicer, csi.ControllerBase):
    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self._attach_slots: anyio.Lock | None = None

    def _require(self, rpc_type: csi.ControllerServiceCapabilityRpcType) -> None:
        if rpc_type not in controller_rpcs(self.ctx.features, self.ctx.config.mode):
            raise GRPCError(Status.UNIMPLEMENTED, f"{rpc_type.name} is not offered by this instance")

    @rpc("CreateVolume", mutating=True)
    async def create_volume(self, message: csi.CreateVolumeRequest) -> csi.CreateVolumeResponse:
        name = v.volume_name(message.name)
        access = v.capabilities(message.volume_capabilities, self.ctx.features)
        required, limit = v.capacity_range(message.capacity_range)
        v.string_map(message.parameters, "parameters")
        source = v.content_source(message.volume_content_source)
        v.known_source(source)
        if not v.topology_allows(message.accessibility_requirements, self.ctx.config.node_id):
            raise errors.CapacityExhausted(f"this node ({self.ctx.config.node_id}) is not in the requisite topology")
        spec = base.VolumeSpec(name, required, limit, dict(message.parameters), access.access_type, access.fs_type,
                               source)
        with self.ctx.locks.hold(spec.volume_id, source.source_id if source else ""):
            volume = await self.ctx.backend.create_volume(spec)
        return csi.CreateVolumeResponse(volume=volume_message(volume, self.ctx.topology))

    @rpc("DeleteVolume", mutating=True)
    async def delete_volume(self, message: csi.DeleteVolumeRequest) -> csi.DeleteVolumeResponse:
        v.required(message.volume_id, "volume_id")
        if is_driver_volume_id(message.volume_id):  # an id that was never ours is already "deleted"
            with self.ctx.locks.hold(message.volume_id):
                await self.ctx.backend.delete_volume(message.volume_id)
        return csi.DeleteVolumeResponse()

    @rpc("ControllerPublishVolume", mutating=True)
    async def controller_publish_volume(
        self, message: csi.ControllerPublishVolumeRequest
    ) -> csi.ControllerPublishVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        node_id = v.required(message.node_id, "node_id")
        v.capability(v.present(message.volume_capability, "volume_capability"), self.ctx.features)
        v.known_volume(volume_id)
        context = {PUBLISH_NODE_KEY: node_id}
        if self.ctx.config.mode is Mode.CONTROLLER:
            return csi.ControllerPublishVolumeResponse(publish_context=context)
        with self.ctx.locks.hold(volume_id):
            extra = await self._publish(volume_id, node_id, message.readonly)
        return csi.ControllerPublishVolumeResponse(publish_context={**extra, **context})

    async def _publish(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        """Publish within the node's attach limit (``--max-volumes-per-node``): the slots of one node are one
        resource, so they are counted and taken under one lock; without a limit there is nothing to count."""
        limit = self.ctx.config.max_volumes_per_node
        if not limit:
            return await self.ctx.backend.publish_volume(volume_id, node_id, readonly)
        if self._attach_slots is None:
            self._attach_slots = anyio.Lock()
        await self.ctx.backend.require_volume(volume_id)  # an unknown volume is NOT_FOUND, not over the limit
        async with self._attach_slots:
            attached = [vol.volume_id for vol in await self.ctx.backend.list_volumes()
                        if node_id in vol.published_node_ids]
            if volume_id not in attached and len(attached) >= limit:
                raise errors.CapacityExhausted(
                    f"node {node_id!r} already has {len(attached)} volumes attached, its limit "
                    f"(--max-volumes-per-node {limit})")
            return await self.ctx.backend.publish_volume(volume_id, node_id, readonly)

    @rpc("ControllerUnpublishVolume", mutating=True)
    async def controller_unpublish_volume(
        self, message: csi.ControllerUnpublishVolumeRequest
    ) -> csi.ControllerUnpublishVolumeResponse:
        v.required(message.volume_id, "volume_id")
        if self.ctx.config.mode is not Mode.CONTROLLER and is_driver_volume_id(message.volume_id):
            with self.ctx.locks.hold(message.volume_id):
                await self.ctx.backend.unpublish_volume(message.volume_id, message.node_id)
        return csi.ControllerUnpublishVolumeResponse()

    @rpc("ValidateVolumeCapabilities", log_level="DEBUG")
    async def validate_volume_capabilities(
        self, message: csi.ValidateVolumeCapabilitiesRequest
    ) -> csi.ValidateVolumeCapabilitiesResponse:
        volume_id = v.volume_id(message.volume_id)
        problem = v.capabilities_problem(message.volume_capabilities, self.ctx.features)
        await self.ctx.backend.get_volume(v.known_volume(volume_id))
        if problem:
            return csi.ValidateVolumeCapabilitiesResponse(message=problem)
        return csi.ValidateVolumeCapabilitiesResponse(
            confirmed=csi.ValidateVolumeCapabilitiesResponseConfirmed(
                volume_context=dict(message.volume_context),
                volume_capabilities=list(message.volume_capabilities),
                parameters=dict(message.parameters),
            )
        )

    @rpc("ListVolumes", log_level="DEBUG")
    async def list_volumes(self, message: csi.ListVolumesRequest) -> csi.ListVolumesResponse:
        limit = v.max_entries(message.max_entries)
        volumes = await self.ctx.backend.list_volumes()
        start, end, token = page([vol.volume_id for vol in volumes], message.starting_token, limit)
        entries = [
            csi.ListVolumesResponseEntry(
                volume=volume_message(vol, self.ctx.topology),
                status=csi.ListVolumesResponseVolumeStatus(
                    published_node_ids=list(vol.published_node_ids),
                    volume_condition=condition_message(vol.condition),
                ),
            )
            for vol in volumes[start:end]
        ]
        return csi.ListVolumesResponse(entries=entries, next_token=token)

    @rpc("GetCapacity", log_level="DEBUG")
    async def get_capacity(self, message: csi.GetCapacityRequest) -> csi.GetCapacityResponse:
        topology = message.accessible_topology
        if topology is not None and topology.segments.get(base.TOPOLOGY_KEY) != self.ctx.config.node_id:
            return csi.GetCapacityResponse(available_capacity=0, maximum_volume_size=0)
        if message.volume_capabilities:
            try:
                v.capabilities(message.volume_capabilities, self.ctx.features, any_mode=True)
            except v.UnsupportedCapability:
                return csi.GetCapacityResponse(available_capacity=0, maximum_volume_size=0)
        capacity = await self.ctx.backend.get_capacity(dict(message.parameters))
        return csi.GetCapacityResponse(
            available_capacity=capacity.available_bytes,
            maximum_volume_size=capacity.maximum_volume_bytes,
            minimum_volume_size=capacity.minimum_volume_bytes,
        )

    @rpc("ControllerGetCapabilities", log_level="DEBUG")
    async def controller_get_capabilities(
        self, message: csi.ControllerGetCapabilitiesRequest
    ) -> csi.ControllerGetCapabilitiesResponse:
        return csi.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapabilityRpc(type=t))
                for t in controller_rpcs(self.ctx.features, self.ctx.config.mode)
            ]
        )

    @rpc("ControllerExpandVolume", mutating=True)
    async def controller_expand_volume(
        self, message: csi.ControllerExpandVolumeRequest
    ) -> csi.ControllerExpandVolumeResponse:
        self._require(csi.ControllerServiceCapabilityRpcType.EXPAND_VOLUME)
        volume_id = v.volume_id(message.volume_id)
        required, limit = v.capacity_range(v.present(message.capacity_range, "capacity_range"))
        if message.volume_capability is not None:
            v.capability(message.volume_capability, self.ctx.features)
        v.known_volume(volume_id)
        if self.ctx.config.mode is Mode.CONTROLLER:
            # The storage lives on the node: NodeExpandVolume grows it there.
            return csi.ControllerExpandVolumeResponse(capacity_bytes=required, node_expansion_required=True)
        with self.ctx.locks.hold(volume_id):
            size = await self.ctx.backend.expand_volume(volume_id, required, limit)
        return csi.ControllerExpandVolumeResponse(capacity_bytes=size, node_expansion_required=True)

    @rpc("ControllerGetVolume", log_level="DEBUG")
    async def controller_get_volume(self, message: csi.ControllerGetVolumeRequest) -> csi.ControllerGetVolumeResponse:
        volume = await self.ctx.backend.get_volume(v.known_volume(v.volume_id(message.volume_id)))
        return csi.ControllerGetVolumeResponse(
            volume=volume_message(volume, self.ctx.topology),
            status=csi.ControllerGetVolumeResponseVolumeStatus(
                published_node_ids=list(volume.published_node_ids),
                volume_condition=condition_message(volume.condition),
            ),
        )

    # -- snapshots -------------------------------------------------------------
    @rpc("CreateSnapshot", mutating=True)
    async def create_snapshot(self, message: csi.CreateSnapshotRequest) -> csi.CreateSnapshotResponse:
        self._require(csi.ControllerServiceCapabilityRpcType.CREATE_DELETE_SNAPSHOT)
        name = v.volume_name(message.name)
        source = v.volume_id(message.source_volume_id, "source_volume_id")
        v.string_map(message.parameters, "parameters")
        v.known_volume(source)
        with self.ctx.locks.hold(base.snapshot_id_for(name), source):
            snap = await self.ctx.backend.create_snapshot(source, name, dict(message.parameters))
        return csi.CreateSnapshotResponse(snapshot=snapshot_message(snap))

    @rpc("DeleteSnapshot", mutating=True)
    async def delete_snapshot(self, message: csi.DeleteSnapshotRequest) -> csi.DeleteSnapshotResponse:
        self._require(csi.ControllerServiceCapabilityRpcType.CREATE_DELETE_SNAPSHOT)
        v.required(message.snapshot_id, "snapshot_id")
        if is_driver_snapshot_id(message.snapshot_id):
            with self.ctx.locks.hold(message.snapshot_id):
                await self.ctx.backend.delete_snapshot(message.snapshot_id)
        return csi.DeleteSnapshotResponse()

    @rpc("ListSnapshots", log_level="DEBUG")
    async def list_snapshots(self, message: csi.ListSnapshotsRequest) -> csi.ListSnapshotsResponse:
        self._require(csi.ControllerServiceCapabilityRpcType.LIST_SNAPSHOTS)
        limit = v.max_entries(message.max_entries)
        snaps = await self.ctx.backend.list_snapshots()
        if message.snapshot_id:
            snaps = [s for s in snaps if s.snapshot_id == message.snapshot_id]
        if message.source_volume_id:
            snaps = [s for s in snaps if s.source_volume_id == message.source_volume_id]
        start, end, token = page([s.snapshot_id for s in snaps], message.starting_token, limit)
        return csi.ListSnapshotsResponse(
            entries=[csi.ListSnapshotsResponseEntry(snapshot=snapshot_message(s)) for s in snaps[start:end]],
            next_token=token,
        )

    @rpc("GetSnapshot", log_level="DEBUG")
    async def get_snapshot(self, message: csi.GetSnapshotRequest) -> csi.GetSnapshotResponse:
        self._require(csi.ControllerServiceCapabilityRpcType.GET_SNAPSHOT)
        snap = await self.ctx.backend.get_snapshot(v.known_snapshot(v.snapshot_id(message.snapshot_id)))
        return csi.GetSnapshotResponse(snapshot=snapshot_message(snap))
