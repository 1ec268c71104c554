"""CSI Node service: attach + format + mount at stage, bind mounts at publish.

Filesystem volumes are mounted at the staging path and bind-mounted to each
target. Block volumes bind the attached device node onto a file inside the
staging directory (``<staging>/device``), so a staged block volume is visible
in mountinfo like a filesystem one and survives a driver restart; publish binds
that file onto the target file.
"""

from __future__ import annotations

import os

import anyio
from loguru import logger

from backends import errors, node, paths
from backends.base import AccessType
from backends.faults import fault_point
from backends.system.runner import Runner
from csi import validation as v
from csi.capabilities import node_rpcs
from csi.context import PUBLISH_NODE_KEY, ServiceContext, Servicer
from csi.gen.csi import v1 as csi
from csi.rpc import rpc

BLOCK_FILE = "device"


def block_path(staging: str) -> str:
    return os.path.join(staging, BLOCK_FILE)


class NodeService(Servicer, csi.NodeBase):
    def __init__(self, ctx: ServiceContext, runner: Runner) -> None:
        super().__init__(ctx)
        self.runner = runner

    def _path(self, value: str, what: str) -> str:
        return v.safe_path(value, what, self.ctx.path_prefixes)

    def _access(self, cap: csi.VolumeCapability | None) -> v.RequestedAccess:
        if cap is None:
            raise errors.InvalidArgument("volume_capability is required")
        return v.capability(cap, self.ctx.features)

    def _check_publish_context(self, context: dict[str, str]) -> None:
        attached_to = context.get(PUBLISH_NODE_KEY)
        if attached_to is not None and attached_to != self.ctx.config.node_id:
            raise errors.WrongNode(
                f"the volume was attached to node {attached_to!r}, not to this node ({self.ctx.config.node_id!r})"
            )

    @rpc("NodeStageVolume", mutating=True)
    async def node_stage_volume(self, message: csi.NodeStageVolumeRequest) -> csi.NodeStageVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        staging = self._path(message.staging_target_path, "staging_target_path")
        access = self._access(message.volume_capability)
        self._check_publish_context(message.publish_context)
        backend = self.ctx.backend
        with self.ctx.locks.hold(volume_id):
            await backend.require_volume(volume_id)
            was_attached = await backend.device_path(volume_id) is not None
            device = await backend.attach(volume_id, readonly=access.read_only)
            fault_point("stage.after_attach")
            try:
                await self._stage(volume_id, device, staging, access, fresh=not was_attached)
            except BaseException:
                if not was_attached:
                    with anyio.CancelScope(shield=True):
                        await self._undo_attach(volume_id, staging)
                raise
        return csi.NodeStageVolumeResponse()

    async def _stage(self, volume_id: str, device: str, staging: str, access: v.RequestedAccess, *,
                     fresh: bool) -> None:
        """``fresh``: this call attached the device, so nothing has used it since."""
        try:
            if access.access_type is AccessType.BLOCK:
                await node.ensure_bind_mounted(device, block_path(staging), readonly=access.read_only, block=True)
                return
            if not access.read_only:
                zeros = fresh and await self.ctx.backend.reads_as_zeros(volume_id)
                await node.ensure_formatted(self.runner, device, access.fs_type, known_zeros=zeros)
            mounted = await node.ensure_mounted(device, staging, access.fs_type, options=access.mount_flags,
                                                readonly=access.read_only)
            try:
                fault_point("stage.after_mount")
                if not access.read_only:
                    # A volume restored or cloned into a larger size carries its source's smaller filesystem.
                    await node.ensure_filesystem_grown(self.runner, device, staging, access.fs_type)
            except BaseException:
                if mounted:  # undo only what this call did; an earlier stage's mount stays
                    with anyio.CancelScope(shield=True):
                        await node.ensure_unmounted(staging, remove=False)
                raise
        except errors.VolumeInUse as exc:
            raise errors.AlreadyExists(f"staging path holds an incompatible mount: {exc}") from exc

    async def _undo_attach(self, volume_id: str, staging: str) -> None:
        """Detach a device this NodeStage attached and could not stage; the stage's own error is what the CO sees."""
        try:
            await node.ensure_unmounted(block_path(staging))
            await self.ctx.backend.detach(volume_id)
        except Exception as exc:  # reported, never raised over the original error
            logger.warning("volume {} stays attached after a failed stage: {}", volume_id, exc)

    @rpc("NodeUnstageVolume", mutating=True)
    async def node_unstage_volume(self, message: csi.NodeUnstageVolumeRequest) -> csi.NodeUnstageVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        staging = self._path(message.staging_target_path, "staging_target_path")
        backend = self.ctx.backend
        with self.ctx.locks.hold(volume_id):
            device = await backend.device_path(volume_id)
            for path, remove in ((block_path(staging), True), (staging, False)):
                mounted = await paths.mounted_device(path)
                if mounted is not None and device is not None and mounted != await paths.device_number(device):
                    raise errors.PreconditionFailed(f"{path} holds a mount that is not volume {volume_id}")
                await node.ensure_unmounted(path, remove=remove)
            await backend.detach(volume_id)
        return csi.NodeUnstageVolumeResponse()

    @rpc("NodePublishVolume", mutating=True)
    async def node_publish_volume(self, message: csi.NodePublishVolumeRequest) -> csi.NodePublishVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        target = self._path(message.target_path, "target_path")
        if not message.staging_target_path:  # we advertise STAGE_UNSTAGE_VOLUME: publish needs a stage first
            raise errors.PreconditionFailed("staging_target_path is required: the volume must be staged first")
        staging = self._path(message.staging_target_path, "staging_target_path")
        access = self._access(message.volume_capability)
        readonly = message.readonly or access.read_only
        block = access.access_type is AccessType.BLOCK
        source = block_path(staging) if block else staging
        with self.ctx.locks.hold(volume_id):
            await self.ctx.backend.require_volume(volume_id)
            if await paths.mounted_device(source) is None:
                raise errors.PreconditionFailed(f"volume {volume_id} is not staged at {staging}")
            if access.single_writer:
                await self._check_single_writer(volume_id, source, target)
            try:
                await node.ensure_bind_mounted(source, target, readonly=readonly, block=block,
                                               options=access.mount_flags)
            except errors.VolumeInUse as exc:
                raise errors.AlreadyExists(f"target path holds an incompatible mount: {exc}") from exc
        return csi.NodePublishVolumeResponse()

    async def _check_single_writer(self, volume_id: str, source: str, target: str) -> None:
        """SINGLE_NODE_SINGLE_WRITER: refuse a second publish target (ReadWriteOncePod)."""
        device = await self.ctx.backend.device_path(volume_id)
        if device is None:
            return
        others = [p for p in await paths.device_in_use(device) if p not in (source, target)]
        if others:
            raise errors.PreconditionFailed(
                f"volume {volume_id} is single-writer and already published at {', '.join(others)}")

    @rpc("NodeUnpublishVolume", mutating=True)
    async def node_unpublish_volume(
        self, message: csi.NodeUnpublishVolumeRequest
    ) -> csi.NodeUnpublishVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        target = self._path(message.target_path, "target_path")
        with self.ctx.locks.hold(volume_id):
            await node.ensure_unmounted(target, remove=True)
        return csi.NodeUnpublishVolumeResponse()

    @rpc("NodeGetVolumeStats", log_level="DEBUG")
    async def node_get_volume_stats(
        self, message: csi.NodeGetVolumeStatsRequest
    ) -> csi.NodeGetVolumeStatsResponse:
        volume_id = v.volume_id(message.volume_id)
        path = self._path(message.volume_path, "volume_path")
        volume = await self.ctx.backend.get_volume(volume_id)
        device = await self.ctx.backend.device_path(volume_id)
        mounted = await paths.mounted_device(path)
        if mounted is None or device is None or mounted != await paths.device_number(device):
            raise errors.NotFound(f"volume {volume_id} is not staged or published at {path}")
        usage = await paths.path_usage(path)
        if usage is None or await paths.mounted_device(path) != mounted:  # unpublished while we looked
            raise errors.NotFound(f"volume path {path} does not exist")
        condition = volume.condition
        unit = csi.VolumeUsageUnit
        entries = [csi.VolumeUsage(available=usage.available_bytes, total=usage.total_bytes, used=usage.used_bytes,
                                   unit=unit.BYTES)]
        if usage.total_inodes:
            entries.append(csi.VolumeUsage(available=usage.free_inodes, total=usage.total_inodes,
                                           used=usage.used_inodes, unit=unit.INODES))
        return csi.NodeGetVolumeStatsResponse(
            usage=entries,
            volume_condition=csi.VolumeCondition(abnormal=condition.abnormal, message=condition.message),
        )

    @rpc("NodeExpandVolume", mutating=True)
    async def node_expand_volume(self, message: csi.NodeExpandVolumeRequest) -> csi.NodeExpandVolumeResponse:
        volume_id = v.volume_id(message.volume_id)
        path = self._path(message.volume_path, "volume_path")
        required, limit = v.capacity_range(message.capacity_range)
        if message.volume_capability is not None:
            self._access(message.volume_capability)
        backend = self.ctx.backend
        with self.ctx.locks.hold(volume_id):
            await backend.require_volume(volume_id)
            if not await anyio.Path(path).exists():
                raise errors.NotFound(f"volume path {path} does not exist")
            if required:
                await backend.expand_volume(volume_id, required, limit)
            size = await backend.refresh_device_size(volume_id)
            device = await backend.device_path(volume_id)
            fs_type = await paths.mounted_fs_type(path)
            if device is not None and fs_type:
                await node.ensure_filesystem_grown(self.runner, device, path, fs_type)
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
