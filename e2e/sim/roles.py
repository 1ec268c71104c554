"""The cluster-side callers: external-provisioner (node deployment, capacity tracking), kube-scheduler's
volume binding, external-attacher, external-resizer and external-snapshotter.

Each issues the RPCs its real counterpart issues, with the same arguments;
``README.md`` lists what is modelled and what is not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import anyio

from csi.gen.csi import v1 as csi
from e2e.sim.driver import RETRYABLE, Caller, CallFailed, DriverInstance
from e2e.sim.nodes import SimNode
from e2e.sim.objects import (
    RESERVED_PREFIX,
    TOPOLOGY_KEY,
    Claim,
    PersistentVolume,
    Pod,
    StorageClass,
    capability,
    segment,
)

Mode = csi.VolumeCapabilityAccessModeMode
CRpc = csi.ControllerServiceCapabilityRpcType


class Reschedule(Exception):
    """CreateVolume said RESOURCE_EXHAUSTED: the provisioner drops ``selected-node`` and the scheduler tries again."""


class Unschedulable(Exception):
    """No node has a CSIStorageCapacity large enough for the claim."""


class ProtocolViolation(AssertionError):
    """The driver answered something a real sidecar would reject or mis-handle."""


@dataclass(frozen=True)
class CapacityObject:
    """A CSIStorageCapacity: one per (storage class, topology segment)."""

    storage_class: str
    node: str
    capacity_bytes: int
    maximum_volume_size: int


def creation_parameters(sc: StorageClass, claim: Claim, pv_name: str) -> dict[str, str]:
    """StorageClass parameters as CreateVolume gets them: reserved keys out, ``--extra-create-metadata`` in."""
    params = {k: v for k, v in sc.parameters.items() if not k.startswith(RESERVED_PREFIX)}
    params.update({
        "csi.storage.k8s.io/pvc/name": claim.name,
        "csi.storage.k8s.io/pvc/namespace": claim.namespace,
        "csi.storage.k8s.io/pv/name": pv_name,
    })
    return params


class Provisioner:
    """external-provisioner with ``--node-deployment --strict-topology --enable-capacity --extra-create-metadata``."""

    def __init__(self, node: SimNode, caller: Caller, driver_name: str) -> None:
        self.node, self.caller, self.driver_name = node, caller, driver_name
        self.controller_caps: set[CRpc] = set()
        #: Why the last capacity poll published nothing ('' when it did).
        self.capacity_error = ""

    @property
    def driver(self) -> DriverInstance:
        return self.node.driver

    async def startup(self) -> None:
        info = await self.caller.call(self.driver, "GetPluginInfo",
                                      lambda s: s.identity.get_plugin_info(csi.GetPluginInfoRequest()))
        if info.name != self.driver_name:
            raise ProtocolViolation(f"driver calls itself {info.name!r}, the CSIDriver is {self.driver_name!r}")
        await self.caller.call(self.driver, "Probe", lambda s: s.identity.probe(csi.ProbeRequest()))
        await self.caller.call(self.driver, "GetPluginCapabilities",
                               lambda s: s.identity.get_plugin_capabilities(csi.GetPluginCapabilitiesRequest()))
        caps = await self.caller.call(
            self.driver, "ControllerGetCapabilities",
            lambda s: s.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest()))
        self.controller_caps = {c.rpc.type for c in caps.capabilities if c.rpc is not None}

    @property
    def multi_writer(self) -> bool:
        return CRpc.SINGLE_NODE_MULTI_WRITER in self.controller_caps

    async def capacity(self, sc: StorageClass) -> CapacityObject | None:
        """The capacity controller's poll: raw class parameters, a mount capability with mode UNKNOWN."""
        request = csi.GetCapacityRequest(
            volume_capabilities=[csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(),
                                                      access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.UNKNOWN))],
            parameters=dict(sc.parameters),
            accessible_topology=segment(self.node.name),
        )
        try:
            resp = await self.caller.call(self.driver, "GetCapacity", lambda s: s.controller.get_capacity(request))
        except CallFailed as exc:
            self.capacity_error = str(exc)
            return None  # the controller logs it and keeps no CSIStorageCapacity for this segment
        self.capacity_error = ""
        return CapacityObject(sc.name, self.node.name, resp.available_capacity, resp.maximum_volume_size or 0)

    def create_request(self, claim: Claim) -> csi.CreateVolumeRequest:
        sc = claim.storage_class
        cap = capability(claim.volume_mode, sc.fs_type, claim.access_mode, self.multi_writer, sc.mount_options)
        topology = segment(claim.selected_node)
        source = None
        if claim.snapshot_handle:
            source = csi.VolumeContentSource(
                snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=claim.snapshot_handle))
        return csi.CreateVolumeRequest(
            name=claim.pv_name,
            capacity_range=csi.CapacityRange(required_bytes=claim.size_bytes),
            volume_capabilities=[cap],
            parameters=creation_parameters(sc, claim, claim.pv_name),
            accessibility_requirements=csi.TopologyRequirement(requisite=[topology], preferred=[topology]),
            volume_content_source=source,
        )

    async def provision(self, claim: Claim, *, retry_on: frozenset[str] = RETRYABLE) -> PersistentVolume:
        if claim.selected_node != self.node.name:
            raise ValueError(f"{claim.name} is selected for {claim.selected_node!r}, not {self.node.name!r}")
        request = self.create_request(claim)
        try:
            resp = await self.caller.call(self.driver, "CreateVolume",
                                          lambda s: s.controller.create_volume(request), retry_on=retry_on)
        except CallFailed as exc:
            if exc.code == "RESOURCE_EXHAUSTED":
                claim.selected_node = ""
                raise Reschedule(exc.message) from exc
            raise
        return self.record(claim, resp.volume)

    def record(self, claim: Claim, volume: csi.Volume | None) -> PersistentVolume:
        if volume is None:
            raise ProtocolViolation("CreateVolume answered without a volume")
        topologies = [dict(t.segments) for t in volume.accessible_topology]
        if topologies != [{TOPOLOGY_KEY: self.node.name}]:
            raise ProtocolViolation(f"volume {volume.volume_id} reports topology {topologies}, expected "
                                    f"only {self.node.name}")
        if volume.capacity_bytes < claim.size_bytes:
            raise ProtocolViolation(f"volume {volume.volume_id} has {volume.capacity_bytes} bytes, "
                                    f"{claim.size_bytes} were asked")
        claim.pv = PersistentVolume(
            name=claim.pv_name, volume_handle=volume.volume_id, capacity_bytes=volume.capacity_bytes,
            volume_attributes=dict(volume.volume_context), node=self.node.name, volume_mode=claim.volume_mode,
            fs_type=claim.storage_class.fs_type, access_mode=claim.access_mode,
            mount_options=claim.storage_class.mount_options,
        )
        return claim.pv

    async def delete(self, pv: PersistentVolume) -> None:
        request = csi.DeleteVolumeRequest(volume_id=pv.volume_handle)
        await self.caller.call(self.driver, "DeleteVolume", lambda s: s.controller.delete_volume(request))


class Scheduler:
    """kube-scheduler's VolumeBinding plugin for late-binding claims, reading CSIStorageCapacity."""

    def __init__(self, provisioners: dict[str, Provisioner], rng: random.Random) -> None:
        self.provisioners = provisioners
        self.rng = rng
        self.capacities: dict[tuple[str, str], CapacityObject] = {}

    async def refresh(self, sc: StorageClass) -> None:
        """One poll of every node's capacity controller (``--capacity-poll-interval``)."""
        for name, provisioner in self.provisioners.items():
            found = await provisioner.capacity(sc)
            if found is None:
                self.capacities.pop((sc.name, name), None)
            else:
                self.capacities[(sc.name, name)] = found

    def fits(self, claim: Claim, node: str) -> bool:
        cap = self.capacities.get((claim.storage_class.name, node))
        if cap is None:
            return False  # no CSIStorageCapacity for the segment: the node is not a candidate
        limit = cap.maximum_volume_size if cap.maximum_volume_size else cap.capacity_bytes
        return claim.size_bytes <= limit

    def select(self, pod: Pod) -> str:
        """Choose the pod's node; set ``selected-node`` on its unbound claims."""
        bound = {c.pv.node for c in pod.claims if c.pv is not None}
        if len(bound) > 1:
            raise Unschedulable(f"pod {pod.name} uses volumes pinned to different nodes: {sorted(bound)}")
        candidates = sorted(bound) if bound else sorted(self.provisioners)
        if pod.node_selector:
            candidates = [n for n in candidates if n == pod.node_selector]
        unbound = [c for c in pod.claims if c.pv is None]
        fitting = [n for n in candidates if all(self.fits(c, n) for c in unbound)]
        if not fitting:
            why = "; ".join(f"{n}: {p.capacity_error}" for n, p in self.provisioners.items() if p.capacity_error)
            raise Unschedulable(f"no node has capacity for pod {pod.name}'s claims" + (f" ({why})" if why else ""))
        node = self.rng.choice(fitting)
        for claim in unbound:
            claim.selected_node = node
        pod.node = node
        return node


class Attacher:
    """external-attacher against the controller-mode driver: VolumeAttachment ⇄ Controller(Un)PublishVolume."""

    def __init__(self, controller: DriverInstance, caller: Caller, multi_writer: bool) -> None:
        self.controller, self.caller, self.multi_writer = controller, caller, multi_writer
        #: VolumeAttachment status: (pv name, node) → publish context.
        self.attachments: dict[tuple[str, str], tuple[PersistentVolume, SimNode, dict[str, str]]] = {}

    async def attach(self, pv: PersistentVolume, node: SimNode) -> dict[str, str]:
        if node.registration is None:
            raise ValueError(f"node {node.name} has no CSINode entry yet")
        request = csi.ControllerPublishVolumeRequest(
            volume_id=pv.volume_handle, node_id=node.registration.node_id,
            volume_capability=capability(pv.volume_mode, pv.fs_type, pv.access_mode, self.multi_writer,
                                         pv.mount_options),
            readonly=pv.read_only, volume_context=dict(pv.volume_attributes),
        )
        resp = await self.caller.call(self.controller, "ControllerPublishVolume",
                                      lambda s: s.controller.controller_publish_volume(request))
        context = dict(resp.publish_context)
        self.attachments[(pv.name, node.name)] = (pv, node, context)
        return context

    def publish_context(self, pv: PersistentVolume, node: SimNode) -> dict[str, str]:
        return self.attachments[(pv.name, node.name)][2]

    async def detach(self, pv: PersistentVolume, node: SimNode) -> None:
        if node.registration is None:
            raise ValueError(f"node {node.name} has no CSINode entry yet")
        request = csi.ControllerUnpublishVolumeRequest(volume_id=pv.volume_handle, node_id=node.registration.node_id)
        await self.caller.call(self.controller, "ControllerUnpublishVolume",
                               lambda s: s.controller.controller_unpublish_volume(request))
        self.attachments.pop((pv.name, node.name), None)

    async def resync(self) -> None:
        """The attacher's periodic resync: ControllerPublish again for every attached VolumeAttachment."""
        for pv, node, _ in list(self.attachments.values()):
            await self.attach(pv, node)


class Resizer:
    """external-resizer against the controller-mode driver."""

    def __init__(self, controller: DriverInstance, caller: Caller, multi_writer: bool) -> None:
        self.controller, self.caller, self.multi_writer = controller, caller, multi_writer

    async def expand(self, pv: PersistentVolume, new_size: int) -> tuple[int, bool]:
        request = csi.ControllerExpandVolumeRequest(
            volume_id=pv.volume_handle, capacity_range=csi.CapacityRange(required_bytes=new_size),
            volume_capability=capability(pv.volume_mode, pv.fs_type, pv.access_mode, self.multi_writer,
                                         pv.mount_options),
        )
        resp = await self.caller.call(self.controller, "ControllerExpandVolume",
                                      lambda s: s.controller.controller_expand_volume(request))
        return resp.capacity_bytes, resp.node_expansion_required


class Snapshotter:
    """external-snapshotter (node deployment): CreateSnapshot until ready, DeleteSnapshot."""

    def __init__(self, node: SimNode, caller: Caller) -> None:
        self.node, self.caller = node, caller

    async def create(self, pv: PersistentVolume, content_uid: str) -> csi.Snapshot:
        request = csi.CreateSnapshotRequest(source_volume_id=pv.volume_handle, name=f"snapshot-{content_uid}")
        for _ in range(100):
            resp = await self.caller.call(self.node.driver, "CreateSnapshot",
                                          lambda s: s.controller.create_snapshot(request))
            if resp.snapshot is not None and resp.snapshot.ready_to_use:
                return resp.snapshot
            await anyio.sleep(0.2)
        raise ProtocolViolation(f"snapshot of {pv.name} never became ready")

    async def delete(self, snapshot_id: str) -> None:
        request = csi.DeleteSnapshotRequest(snapshot_id=snapshot_id)
        await self.caller.call(self.node.driver, "DeleteSnapshot", lambda s: s.controller.delete_snapshot(request))
