"""kubelet's CSI volume manager for one node, plus node-driver-registrar's registration.

Path layout (``<root>`` is the node's kubelet directory):

* filesystem staging: ``<root>/plugins/kubernetes.io/csi/<driver>/<sha256(volume handle)>/globalmount``,
  with ``vol_data.json`` beside ``globalmount``;
* filesystem target: ``<root>/pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount``, with ``vol_data.json``
  beside ``mount``; kubelet creates the parent, the driver creates ``mount``;
* block staging: ``<root>/plugins/kubernetes.io/csi/volumeDevices/staging/<pv>`` (a directory kubelet creates);
* block target: ``<root>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod uid>`` (the driver creates the
  file; kubelet creates its parent) and a symlink to it under ``<root>/pods/<uid>/volumeDevices/kubernetes.io~csi``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import anyio

from csi.gen.csi import v1 as csi
from e2e.sim.driver import Caller
from e2e.sim.nodes import Registration, SimNode
from e2e.sim.objects import Claim, PersistentVolume, Pod, VolumeMode, capability
from e2e.sim.roles import Attacher, ProtocolViolation

NRpc = csi.NodeServiceCapabilityRpcType
CSI_PLUGIN_DIR = Path("plugins") / "kubernetes.io" / "csi"


class TopologyViolation(AssertionError):
    """A volume was about to be staged on a node outside its topology."""


@dataclass(frozen=True)
class Mounted:
    pod: Pod
    pv: PersistentVolume
    target: Path


class Kubelet:
    def __init__(self, node: SimNode, caller: Caller, attacher: Attacher, driver_name: str) -> None:
        self.node, self.caller, self.attacher, self.driver_name = node, caller, attacher, driver_name
        self.node_caps: set[NRpc] = set()
        #: Actual state of the world: staged volumes (pv name → pv) and published (pod uid, pv name) targets.
        self.staged: dict[str, PersistentVolume] = {}
        self.mounted: dict[tuple[str, str], Mounted] = {}

    @property
    def root(self) -> Path:
        return self.node.kubelet_dir

    # -- registration ---------------------------------------------------------------------------------------
    async def register(self) -> Registration:
        """node-driver-registrar: GetPluginInfo + NodeGetInfo; kubelet writes the CSINode entry."""
        driver = self.node.driver
        info = await self.caller.call(driver, "GetPluginInfo",
                                      lambda s: s.identity.get_plugin_info(csi.GetPluginInfoRequest()))
        node_info = await self.caller.call(driver, "NodeGetInfo",
                                           lambda s: s.node.node_get_info(csi.NodeGetInfoRequest()))
        if info.name != self.driver_name:
            raise ProtocolViolation(f"node plugin is named {info.name!r}, expected {self.driver_name!r}")
        if node_info.node_id != self.node.name:
            raise ProtocolViolation(f"NodeGetInfo says node {node_info.node_id!r} on {self.node.name}")
        topology = dict(node_info.accessible_topology.segments) if node_info.accessible_topology else {}
        self.node.registration = Registration(info.name, node_info.node_id, topology,
                                              node_info.max_volumes_per_node)
        return self.node.registration

    async def _node_capabilities(self) -> set[NRpc]:
        resp = await self.caller.call(self.node.driver, "NodeGetCapabilities",
                                      lambda s: s.node.node_get_capabilities(csi.NodeGetCapabilitiesRequest()))
        self.node_caps = {c.rpc.type for c in resp.capabilities if c.rpc is not None}
        return self.node_caps

    @property
    def multi_writer(self) -> bool:
        return NRpc.SINGLE_NODE_MULTI_WRITER in self.node_caps

    # -- paths ----------------------------------------------------------------------------------------------
    def staging_path(self, pv: PersistentVolume) -> Path:
        if pv.volume_mode is VolumeMode.BLOCK:
            return self.root / CSI_PLUGIN_DIR / "volumeDevices" / "staging" / pv.name
        digest = hashlib.sha256(pv.volume_handle.encode()).hexdigest()
        return self.root / CSI_PLUGIN_DIR / self.driver_name / digest / "globalmount"

    def target_path(self, pod: Pod, pv: PersistentVolume) -> Path:
        if pv.volume_mode is VolumeMode.BLOCK:
            return self.root / CSI_PLUGIN_DIR / "volumeDevices" / "publish" / pv.name / pod.uid
        return self.root / "pods" / pod.uid / "volumes" / "kubernetes.io~csi" / pv.name / "mount"

    def _capability(self, pv: PersistentVolume) -> csi.VolumeCapability:
        return capability(pv.volume_mode, pv.fs_type, pv.access_mode, self.multi_writer, pv.mount_options)

    async def _write_vol_data(self, directory: Path, pv: PersistentVolume, **extra: str) -> None:
        data = {"specVolID": pv.name, "volumeHandle": pv.volume_handle, "driverName": self.driver_name,
                "nodeName": self.node.name, "volumeLifecycleMode": "Persistent", **extra}
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        await anyio.Path(directory / "vol_data.json").write_text(json.dumps(data))

    # -- operations -----------------------------------------------------------------------------------------
    def check_topology(self, pv: PersistentVolume) -> None:
        reg = self.node.registration
        labels = reg.topology if reg else {}
        if pv.node != self.node.name or labels.get("topology.localcsi.dev/node") != pv.node:
            raise TopologyViolation(f"{pv.name} belongs to node {pv.node}; refusing to stage it on {self.node.name}")

    async def stage(self, pv: PersistentVolume) -> Path:
        """MountDevice: NodeStageVolume at the global mount path."""
        self.check_topology(pv)
        if NRpc.STAGE_UNSTAGE_VOLUME not in await self._node_capabilities():
            raise ProtocolViolation("driver does not advertise STAGE_UNSTAGE_VOLUME")
        request = await self.stage_request(pv)
        await self.caller.call(self.node.driver, "NodeStageVolume", lambda s: s.node.node_stage_volume(request))
        self.staged[pv.name] = pv
        return self.staging_path(pv)

    async def stage_request(self, pv: PersistentVolume) -> csi.NodeStageVolumeRequest:
        """Prepare the directories kubelet prepares and build the NodeStageVolume request."""
        staging = self.staging_path(pv)
        if pv.volume_mode is VolumeMode.FILESYSTEM:
            await self._write_vol_data(staging.parent, pv)
        await anyio.Path(staging).mkdir(parents=True, exist_ok=True)
        return csi.NodeStageVolumeRequest(
            volume_id=pv.volume_handle, publish_context=self.attacher.publish_context(pv, self.node),
            staging_target_path=str(staging), volume_capability=self._capability(pv),
            volume_context=dict(pv.volume_attributes),
        )

    async def publish(self, pod: Pod, pv: PersistentVolume) -> Path:
        """SetUp / MapPodDevice: NodePublishVolume at the pod's path."""
        target = self.target_path(pod, pv)
        await self._write_vol_data(target.parent, pv, podUID=pod.uid)
        context = {**pv.volume_attributes, "csi.storage.k8s.io/pod.name": pod.name,
                   "csi.storage.k8s.io/pod.namespace": pod.namespace, "csi.storage.k8s.io/pod.uid": pod.uid,
                   "csi.storage.k8s.io/serviceAccount.name": "default", "csi.storage.k8s.io/ephemeral": "false"}
        request = csi.NodePublishVolumeRequest(
            volume_id=pv.volume_handle, publish_context=self.attacher.publish_context(pv, self.node),
            staging_target_path=str(self.staging_path(pv)), target_path=str(target),
            volume_capability=self._capability(pv), readonly=pod.read_only or pv.read_only, volume_context=context,
        )
        await self.caller.call(self.node.driver, "NodePublishVolume", lambda s: s.node.node_publish_volume(request))
        if pv.volume_mode is VolumeMode.BLOCK:
            link = self.root / "pods" / pod.uid / "volumeDevices" / "kubernetes.io~csi" / pv.name
            await anyio.Path(link.parent).mkdir(parents=True, exist_ok=True)
            if not await anyio.Path(link).is_symlink():
                await anyio.Path(link).symlink_to(target)
        self.mounted[(pod.uid, pv.name)] = Mounted(pod, pv, target)
        return target

    async def run_pod(self, pod: Pod) -> dict[str, Path]:
        """Wait for attach, stage each volume once, publish it for this pod; returns claim name → path."""
        paths = {}
        for claim in pod.claims:
            pv = require_pv(claim)
            self.check_topology(pv)
            if (pv.name, self.node.name) not in self.attacher.attachments:
                await self.attacher.attach(pv, self.node)  # the attach/detach controller's VolumeAttachment
            if pv.name not in self.staged:
                await self.stage(pv)
            paths[claim.name] = await self.publish(pod, pv)
        return paths

    async def unpublish(self, pod: Pod, pv: PersistentVolume) -> None:
        target = self.target_path(pod, pv)
        request = csi.NodeUnpublishVolumeRequest(volume_id=pv.volume_handle, target_path=str(target))
        await self.caller.call(self.node.driver, "NodeUnpublishVolume",
                               lambda s: s.node.node_unpublish_volume(request))
        self.mounted.pop((pod.uid, pv.name), None)
        await _remove_quietly(target.parent / "vol_data.json")
        await _rmdir_quietly(target.parent)
        if pv.volume_mode is VolumeMode.BLOCK:
            await _remove_quietly(self.root / "pods" / pod.uid / "volumeDevices" / "kubernetes.io~csi" / pv.name)

    async def unstage(self, pv: PersistentVolume) -> None:
        staging = self.staging_path(pv)
        request = csi.NodeUnstageVolumeRequest(volume_id=pv.volume_handle, staging_target_path=str(staging))
        await self.caller.call(self.node.driver, "NodeUnstageVolume", lambda s: s.node.node_unstage_volume(request))
        self.staged.pop(pv.name, None)
        if pv.volume_mode is VolumeMode.FILESYSTEM:
            await _rmdir_quietly(staging)
            await _remove_quietly(staging.parent / "vol_data.json")
            await _rmdir_quietly(staging.parent)

    async def stop_pod(self, pod: Pod) -> None:
        """Tear the pod down; unstage and let the attach/detach controller detach volumes no other pod uses."""
        for claim in pod.claims:
            pv = require_pv(claim)
            await self.unpublish(pod, pv)
            if not any(m.pv.name == pv.name for m in self.mounted.values()):
                await self.unstage(pv)
                await self.attacher.detach(pv, self.node)

    async def expand(self, pod: Pod, pv: PersistentVolume, new_size: int) -> int:
        """NodeExpandVolume at the pod's volume path (filesystem) or the published device (block)."""
        request = csi.NodeExpandVolumeRequest(
            volume_id=pv.volume_handle, volume_path=str(self.target_path(pod, pv)),
            capacity_range=csi.CapacityRange(required_bytes=new_size),
            staging_target_path=str(self.staging_path(pv)), volume_capability=self._capability(pv),
        )
        resp = await self.caller.call(self.node.driver, "NodeExpandVolume",
                                      lambda s: s.node.node_expand_volume(request))
        return resp.capacity_bytes

    async def volume_stats(self, pod: Pod, pv: PersistentVolume) -> csi.NodeGetVolumeStatsResponse:
        request = csi.NodeGetVolumeStatsRequest(volume_id=pv.volume_handle,
                                                volume_path=str(self.target_path(pod, pv)),
                                                staging_target_path=str(self.staging_path(pv)))
        return await self.caller.call(self.node.driver, "NodeGetVolumeStats",
                                      lambda s: s.node.node_get_volume_stats(request))

    async def restart(self, pods: list[Pod]) -> int:
        """kubelet restarts: state is rebuilt from disk and every stage and publish is issued again.

        ``pods`` are the API server's pods bound to this node; a volume counts as in use when its
        ``vol_data.json`` is still on disk. Returns the number of calls repeated.
        """
        mounted = list(self.mounted.values())
        self.staged.clear()
        self.mounted.clear()
        await self.register()
        repeated = 0
        for pod in pods:
            for claim in pod.claims:
                pv = require_pv(claim)
                if not await anyio.Path(self.target_path(pod, pv).parent / "vol_data.json").exists():
                    continue
                if pv.name not in self.staged:
                    await self.stage(pv)
                    repeated += 1
                await self.publish(pod, pv)
                repeated += 1
        lost = [m for m in mounted if (m.pod.uid, m.pv.name) not in self.mounted]
        if lost:
            raise ProtocolViolation(f"kubelet could not reconstruct {[m.target for m in lost]}")
        return repeated


def require_pv(claim: Claim) -> PersistentVolume:
    if claim.pv is None:
        raise ValueError(f"claim {claim.name} is not bound")
    return claim.pv


async def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        await anyio.Path(path).unlink()


async def _rmdir_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        await anyio.Path(path).rmdir()
