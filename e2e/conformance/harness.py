"""What each spec works with: the stubs, the advertised capabilities, request builders and a tracker.

Helpers that create something register it with the tracker before returning,
and helpers that undo something forget it once the plugin answered OK, so a
spec that fails half-way still leaves nothing behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field

import anyio
import pytest

from csi.gen.csi import v1 as csi
from e2e.conformance.client import Capabilities, Client, CRpc, NRpc
from e2e.conformance.config import AccessType, SuiteConfig
from e2e.conformance.resources import Tracker

Mode = csi.VolumeCapabilityAccessModeMode


@dataclass(frozen=True)
class Attachment:
    """A volume made usable on the node: the contexts and paths each later call needs."""

    volume: csi.Volume
    node_id: str
    publish_context: dict[str, str]
    staging_path: str
    target_path: str


def _need(served: bool, unserved: str, kind: str, offered: Collection[CRpc | NRpc],
          rpcs: tuple[CRpc, ...] | tuple[NRpc, ...]) -> None:
    """Skip the spec unless the service is served and advertises every one of ``rpcs``."""
    if not served:
        pytest.skip(unserved)
    for rpc in rpcs:
        if rpc not in offered:
            pytest.skip(f"{kind} capability {rpc.name} not advertised")


@dataclass
class Harness:
    client: Client
    caps: Capabilities
    config: SuiteConfig
    tracker: Tracker
    access_mode: Mode = Mode.SINGLE_NODE_WRITER
    sizes: dict[str, int] = field(default_factory=dict)
    _node_info: csi.NodeGetInfoResponse | None = field(default=None, init=False)

    # ---- gating -------------------------------------------------------------------------------

    def need_controller(self, *rpcs: CRpc) -> None:
        _need(self.caps.has_controller, "plugin does not advertise CONTROLLER_SERVICE", "controller",
              self.caps.controller, rpcs)

    def need_node(self, *rpcs: NRpc) -> None:
        _need(self.caps.node_service, "plugin does not serve the Node service", "node", self.caps.node, rpcs)

    def need_access(self, access: AccessType) -> None:
        if self.config.access is not access:
            pytest.skip(f"suite runs with {self.config.access.value} access; this spec needs {access.value}")

    @property
    def stages(self) -> bool:
        return NRpc.STAGE_UNSTAGE_VOLUME in self.caps.node

    @property
    def controller_publishes(self) -> bool:
        return self.caps.has_controller and CRpc.PUBLISH_UNPUBLISH_VOLUME in self.caps.controller

    # ---- builders -----------------------------------------------------------------------------

    @staticmethod
    def unique_name(what: str) -> str:
        return f"conformance-{what}-{uuid.uuid4().hex[:12]}"

    def capability(self, mode: Mode | None = None) -> csi.VolumeCapability:
        """The suite's access type with ``mode`` (default: the harness's ``access_mode``)."""
        access_mode = csi.VolumeCapabilityAccessMode(mode=mode or self.access_mode)
        if self.config.access is AccessType.BLOCK:
            return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=access_mode)
        return csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type=self.config.fs_type),
                                    access_mode=access_mode)

    async def create_request(self, name: str, size_bytes: int | None = None) -> csi.CreateVolumeRequest:
        """A CreateVolume request as a provisioner would send it: size, capability, parameters, topology."""
        size = self.config.volume_size_bytes if size_bytes is None else size_bytes
        req = csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size) if size else None,
            volume_capabilities=[self.capability()],
            parameters=dict(self.config.parameters),
            secrets=dict(self.config.secrets),
        )
        topology = await self.node_topology()
        if topology is not None:
            req.accessibility_requirements = csi.TopologyRequirement(requisite=[topology], preferred=[topology])
        return req

    # ---- node identity ------------------------------------------------------------------------

    async def node_info(self) -> csi.NodeGetInfoResponse | None:
        if self._node_info is None and self.caps.node_service:
            self._node_info = await self.client.node.node_get_info(csi.NodeGetInfoRequest(),
                                                                   timeout=self.client.timeout)
        return self._node_info

    async def node_id(self) -> str:
        if self.config.node_id:
            return self.config.node_id
        info = await self.node_info()
        if info is None or not info.node_id:
            pytest.skip("no node id: the plugin serves no Node service and --csi-node-id was not given")
        return info.node_id

    async def node_topology(self) -> csi.Topology | None:
        if not self.caps.has_topology:
            return None
        info = await self.node_info()
        if info is None or info.accessible_topology is None or not info.accessible_topology.segments:
            return None
        return info.accessible_topology

    # ---- controller resources -----------------------------------------------------------------

    async def register_volume(self, reply: csi.CreateVolumeResponse) -> None:
        if reply.volume is not None and reply.volume.volume_id:
            self.tracker.volumes[reply.volume.volume_id] = None
            self.sizes[reply.volume.volume_id] = reply.volume.capacity_bytes

    async def register_snapshot(self, reply: csi.CreateSnapshotResponse) -> None:
        if reply.snapshot is not None and reply.snapshot.snapshot_id:
            self.tracker.snapshots[reply.snapshot.snapshot_id] = None
            self.sizes[reply.snapshot.snapshot_id] = reply.snapshot.size_bytes

    async def create_volume(self, name: str | None = None, size_bytes: int | None = None,
                            source: csi.VolumeContentSource | None = None) -> csi.Volume:
        self.need_controller(CRpc.CREATE_DELETE_VOLUME)
        if size_bytes is None and source is not None:
            # A provisioner asks for at least the source's size; smaller is OUT_OF_RANGE by the spec.
            size_bytes = max(self.config.volume_size_bytes, await self.source_size(source))
        req = await self.create_request(name or self.unique_name("vol"), size_bytes)
        req.volume_content_source = source
        reply = await self.client.controller.create_volume(req, timeout=self.client.timeout)
        await self.register_volume(reply)
        assert reply.volume is not None, "CreateVolume answered OK without a volume"
        assert reply.volume.volume_id, "CreateVolume answered a volume without volume_id"
        return reply.volume

    async def source_size(self, source: csi.VolumeContentSource) -> int:
        """The size of a snapshot or volume the tracker knows about (0 if it cannot tell)."""
        if source.snapshot is not None:
            return self.sizes.get(source.snapshot.snapshot_id, 0)
        if source.volume is not None:
            return self.sizes.get(source.volume.volume_id, 0)
        return 0

    def grown_size(self, volume: csi.Volume) -> int:
        """A size expansion specs grow ``volume`` to: the configured one, or more if the volume is already bigger."""
        return max(self.config.expand_size_bytes, 2 * volume.capacity_bytes)

    async def delete_volume(self, volume_id: str) -> None:
        req = csi.DeleteVolumeRequest(volume_id=volume_id, secrets=dict(self.config.secrets))
        await self.client.controller.delete_volume(req, timeout=self.client.timeout)
        self.tracker.volumes.pop(volume_id, None)

    async def create_snapshot(self, volume_id: str, name: str | None = None) -> csi.Snapshot:
        self.need_controller(CRpc.CREATE_DELETE_SNAPSHOT)
        req = csi.CreateSnapshotRequest(source_volume_id=volume_id, name=name or self.unique_name("snap"),
                                        secrets=dict(self.config.secrets))
        reply = await self.client.controller.create_snapshot(req, timeout=self.client.timeout)
        await self.register_snapshot(reply)
        assert reply.snapshot is not None, "CreateSnapshot answered OK without a snapshot"
        assert reply.snapshot.snapshot_id, "CreateSnapshot answered a snapshot without snapshot_id"
        return reply.snapshot

    async def delete_snapshot(self, snapshot_id: str) -> None:
        req = csi.DeleteSnapshotRequest(snapshot_id=snapshot_id, secrets=dict(self.config.secrets))
        await self.client.controller.delete_snapshot(req, timeout=self.client.timeout)
        self.tracker.snapshots.pop(snapshot_id, None)

    async def missing_volume_id(self) -> str:
        """An id the plugin itself minted and then deleted: well-formed, but no longer a volume."""
        if not (self.caps.has_controller and CRpc.CREATE_DELETE_VOLUME in self.caps.controller):
            return "conformance-missing-volume"
        volume = await self.create_volume(self.unique_name("gone"))
        await self.delete_volume(volume.volume_id)
        return volume.volume_id

    async def missing_snapshot_id(self) -> str:
        volume = await self.create_volume()
        snapshot = await self.create_snapshot(volume.volume_id)
        await self.delete_snapshot(snapshot.snapshot_id)
        return snapshot.snapshot_id

    async def controller_publish(self, volume: csi.Volume, node_id: str, readonly: bool = False) -> dict[str, str]:
        req = csi.ControllerPublishVolumeRequest(
            volume_id=volume.volume_id, node_id=node_id, volume_capability=self.capability(), readonly=readonly,
            secrets=dict(self.config.secrets), volume_context=dict(volume.volume_context),
        )
        self.tracker.controller_publications[(volume.volume_id, node_id)] = None
        reply = await self.client.controller.controller_publish_volume(req, timeout=self.client.timeout)
        return dict(reply.publish_context)

    async def controller_unpublish(self, volume_id: str, node_id: str) -> None:
        req = csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id,
                                                   secrets=dict(self.config.secrets))
        await self.client.controller.controller_unpublish_volume(req, timeout=self.client.timeout)
        self.tracker.controller_publications.pop((volume_id, node_id), None)

    # ---- node paths and calls -----------------------------------------------------------------

    async def new_staging_path(self) -> str:
        """A fresh directory, as the CO provides one (the spec makes the CO create it)."""
        path = anyio.Path(self.config.staging_dir) / self.unique_name("staging")
        await path.mkdir(parents=True)
        self.tracker.directories.append(str(path))
        return str(path)

    async def new_target_path(self) -> str:
        """A path whose parent exists but which itself does not: creating it is the plugin's job."""
        parent = anyio.Path(self.config.target_dir) / self.unique_name("target")
        await parent.mkdir(parents=True)
        self.tracker.directories.append(str(parent))
        return str(parent / "target")

    def stage_request(self, volume: csi.Volume, staging: str, publish_context: dict[str, str]
                      ) -> csi.NodeStageVolumeRequest:
        return csi.NodeStageVolumeRequest(
            volume_id=volume.volume_id, publish_context=publish_context, staging_target_path=staging,
            volume_capability=self.capability(), secrets=dict(self.config.secrets),
            volume_context=dict(volume.volume_context),
        )

    def publish_request(self, volume: csi.Volume, staging: str, target: str, publish_context: dict[str, str],
                        readonly: bool = False) -> csi.NodePublishVolumeRequest:
        return csi.NodePublishVolumeRequest(
            volume_id=volume.volume_id, publish_context=publish_context, staging_target_path=staging,
            target_path=target, volume_capability=self.capability(), readonly=readonly,
            secrets=dict(self.config.secrets), volume_context=dict(volume.volume_context),
        )

    async def stage(self, volume: csi.Volume, staging: str, publish_context: dict[str, str]) -> None:
        self.tracker.stages[(volume.volume_id, staging)] = None
        await self.client.node.node_stage_volume(self.stage_request(volume, staging, publish_context),
                                                 timeout=self.client.timeout)

    async def unstage(self, volume_id: str, staging: str) -> None:
        req = csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)
        await self.client.node.node_unstage_volume(req, timeout=self.client.timeout)
        self.tracker.stages.pop((volume_id, staging), None)

    async def publish(self, volume: csi.Volume, staging: str, target: str, publish_context: dict[str, str],
                      readonly: bool = False) -> None:
        self.tracker.publications[(volume.volume_id, target)] = None
        req = self.publish_request(volume, staging, target, publish_context, readonly)
        await self.client.node.node_publish_volume(req, timeout=self.client.timeout)

    async def unpublish(self, volume_id: str, target: str) -> None:
        req = csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
        await self.client.node.node_unpublish_volume(req, timeout=self.client.timeout)
        self.tracker.publications.pop((volume_id, target), None)

    # ---- whole paths up and down --------------------------------------------------------------

    async def attach(self, volume: csi.Volume, readonly: bool = False) -> Attachment:
        """ControllerPublish (if advertised) → NodeStage (if advertised) → NodePublish."""
        node_id = await self.node_id()
        context = await self.controller_publish(volume, node_id) if self.controller_publishes else {}
        staging = ""
        if self.stages:
            staging = await self.new_staging_path()
            await self.stage(volume, staging, context)
        target = await self.new_target_path()
        await self.publish(volume, staging, target, context, readonly)
        return Attachment(volume, node_id, context, staging, target)

    async def detach(self, att: Attachment) -> None:
        await self.unpublish(att.volume.volume_id, att.target_path)
        if att.staging_path:
            await self.unstage(att.volume.volume_id, att.staging_path)
        if self.controller_publishes:
            await self.controller_unpublish(att.volume.volume_id, att.node_id)
