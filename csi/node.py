"""CSI Node service: validate → lock → one call to :class:`backends.nodeops.NodeOps` → respond.

What a node call does, and the rule that it touches only the volume's own mounts at paths strictly below the
kubelet directory, live in ``backends/nodeops.py``; here each request is checked in full (INVALID_ARGUMENT for
anything malformed, before any lookup), the volume's lock taken (busy: ABORTED) and the answer built.
"""

from __future__ import annotations

from backends.base import RequestedAccess
from backends.nodeops import NodeOps
from csi import validation as v
from csi.capabilities import node_rpcs
from csi.context import PUBLISH_NODE_KEY, ServiceContext, Servicer
from csi.gen.csi import v1 as csi
from csi.rpc import rpc


class NodeService(Servicer, csi.NodeBase):
    def __init__(self, ctx: ServiceContext, ops: NodeOps) -> None:
        super().__init__(ctx)
        self.ops = ops

    def _access(self, cap: csi.VolumeCapability | None) -> RequestedAccess:
        return v.capability(v.present(cap, "volume_capability"), self.ctx.features)

    @rpc("NodeStageVolume", mutating=True)
    async def node_stage_volume(self, message: csi.NodeStageVolumeRequest) -> csi.NodeStageVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        staging = v.path(message.staging_target_path, "staging_target_path", self.ops.policy)
        access = self._access(message.volume_capability)
        with self.ctx.locks.hold(volume_id):
            await self.ops.stage(volume_id, staging, access, attached_to=message.publish_context.get(PUBLISH_NODE_KEY))
        return csi.NodeStageVolumeResponse()

    @rpc("NodeUnstageVolume", mutating=True)
    async def node_unstage_volume(self, message: csi.NodeUnstageVolumeRequest) -> csi.NodeUnstageVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        staging = v.path(message.staging_target_path, "staging_target_path", self.ops.policy)
        with self.ctx.locks.hold(volume_id):
            await self.ops.unstage(volume_id, staging)
        return csi.NodeUnstageVolumeResponse()

    @rpc("NodePublishVolume", mutating=True)
    async def node_publish_volume(self, message: csi.NodePublishVolumeRequest) -> csi.NodePublishVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        target = v.path(message.target_path, "target_path", self.ops.policy)
        access = self._access(message.volume_capability)
        staging = message.staging_target_path  # optional in the message; NodeOps requires it after the lookup
        if staging:
            staging = v.path(staging, "staging_target_path", self.ops.policy)
        with self.ctx.locks.hold(volume_id):
            await self.ops.publish(volume_id, staging, target, access, readonly=message.readonly)
        return csi.NodePublishVolumeResponse()

    @rpc("NodeUnpublishVolume", mutating=True)
    async def node_unpublish_volume(
        self, message: csi.NodeUnpublishVolumeRequest
    ) -> csi.NodeUnpublishVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        target = v.path(message.target_path, "target_path", self.ops.policy)
        with self.ctx.locks.hold(volume_id):
            await self.ops.unpublish(volume_id, target)
        return csi.NodeUnpublishVolumeResponse()

    @rpc("NodeGetVolumeStats", log_level="DEBUG")
    async def node_get_volume_stats(
        self, message: csi.NodeGetVolumeStatsRequest
    ) -> csi.NodeGetVolumeStatsResponse:
        volume_id = v.volume_id(message.volume_id)
        path = v.volume_path(message.volume_path)
        stats = await self.ops.stats(volume_id, path)
        usage, unit = stats.usage, csi.VolumeUsageUnit
        entries = [csi.VolumeUsage(available=usage.available_bytes, total=usage.total_bytes, used=usage.used_bytes,
                                   unit=unit.BYTES)]
        if usage.total_inodes:
            entries.append(csi.VolumeUsage(available=usage.free_inodes, total=usage.total_inodes,
                                           used=usage.used_inodes, unit=unit.INODES))
        return csi.NodeGetVolumeStatsResponse(
            usage=entries,
            volume_condition=csi.VolumeCondition(abnormal=stats.condition.abnormal, message=stats.condition.message),
        )

    @rpc("NodeExpandVolume", mutating=True)
    async def node_expand_volume(self, message: csi.NodeExpandVolumeRequest) -> csi.NodeExpandVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        path = v.volume_path(message.volume_path)
        required, limit = v.capacity_range(message.capacity_range)
        if message.volume_capability is not None:
            self._access(message.volume_capability)
        with self.ctx.locks.hold(volume_id):
            size = await self.ops.expand(volume_id, path, required, limit)
        return csi.NodeExpandVolumeResponse(capacity_bytes=size)

    @rpc("NodeGetCapabilities", log_level="DEBUG")
    async def node_get_capabilities(self, message: csi.NodeGetCapabilitiesRequest) -> csi.NodeGetCapabilitiesResponse:
        return csi.NodeGetCapabilitiesResponse(
            capabilities=[
                csi.NodeServiceCapability(rpc=csi.NodeServiceCapabilityRpc(type=t))
                for t in node_rpcs(self.ctx.features)
            ]
        )

    @rpc("NodeGetInfo", log_level="DEBUG")
    async def node_get_info(self, message: csi.NodeGetInfoRequest) -> csi.NodeGetInfoResponse:
        return csi.NodeGetInfoResponse(
            node_id=self.ctx.config.node_id,
            max_volumes_per_node=self.ctx.config.max_volumes_per_node,
            accessible_topology=csi.Topology(segments=self.ctx.topology),
        )
