"""A simulated cluster: N node drivers, one controller-mode driver, and every role wired to them."""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.sim import host
from e2e.sim.driver import Caller, DriverInstance
from e2e.sim.kubelet import Kubelet, require_pv
from e2e.sim.nodes import SimNode
from e2e.sim.objects import Claim, Pod, StorageClass, VolumeMode
from e2e.sim.profiles import GIB, MIB, BackendProfile, mismatches
from e2e.sim.roles import Attacher, Provisioner, Reschedule, Resizer, Scheduler, Snapshotter, Unschedulable
from e2e.sim.stats import Stats

DRIVER_NAME = "localcsi.dev"
#: Storage per node: unequal on purpose so capacity-aware placement has something to decide.
NODE_CAPACITIES = {"node-a": 2 * GIB, "node-b": 1 * GIB}
SCHEDULING_ATTEMPTS = 5


class CapabilityMismatch(AssertionError):
    """A driver advertises other capabilities than the profile declares."""


@dataclass
class Cluster:
    profile: BackendProfile
    stats: Stats
    rng: random.Random
    root: Path
    nodes: dict[str, SimNode] = field(default_factory=dict)
    provisioners: dict[str, Provisioner] = field(default_factory=dict)
    kubelets: dict[str, Kubelet] = field(default_factory=dict)
    snapshotters: dict[str, Snapshotter] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    #: VolumeSnapshotContents: snapshot handle → node.
    snapshots: dict[str, str] = field(default_factory=dict)
    controller: DriverInstance | None = None
    keep_root: bool = False
    many_volumes: bool = False
    caller: Caller | None = None
    scheduler: Scheduler | None = None
    attacher: Attacher | None = None
    resizer: Resizer | None = None

    # -- bring-up -------------------------------------------------------------------------------------------
    def storage_class(self, fs_type: str = "ext4") -> StorageClass:
        return StorageClass("localcsi", dict(self.profile.parameters)).with_fs_type(fs_type)

    async def start(self) -> None:
        self.caller = Caller(self.stats)
        controller_root = self.root / "controller"
        await anyio.Path(controller_root).mkdir(parents=True)
        self.controller = DriverInstance(controller_root, ["--mode", "controller", "--node-id", "sim-controller",
                                                           "--driver-name", DRIVER_NAME,
                                                           *self.profile.controller_args()],
                                         self.stats, self.profile.deadlines.start_seconds)
        for name, capacity in NODE_CAPACITIES.items():
            self.nodes[name] = await self._new_node(name, capacity)
            self.provisioners[name] = Provisioner(self.nodes[name], self.caller, DRIVER_NAME)
        # The three drivers start side by side, as a DaemonSet's pods and a Deployment's do; under qemu TCG a
        # Python driver takes several seconds to start, so this matters.
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.controller.start)
            for node in self.nodes.values():
                tg.start_soon(self._start_node, node)
        await self._check_capabilities()
        multi_writer = all(p.multi_writer for p in self.provisioners.values())
        self.attacher = Attacher(self.controller, self.caller, multi_writer)
        self.resizer = Resizer(self.controller, self.caller, multi_writer)
        self.scheduler = Scheduler(self.provisioners, self.rng)
        for name, node in self.nodes.items():
            self.kubelets[name] = Kubelet(node, self.caller, self.attacher, DRIVER_NAME)
            await self.kubelets[name].register()
            self.snapshotters[name] = Snapshotter(node, self.caller)

    async def _check_capabilities(self) -> None:
        """Every driver advertises exactly what the profile declares, or no scenario runs on this cluster."""
        assert self.caller is not None and self.controller is not None
        found = [f"{name}: {m}" for name, p in self.provisioners.items()
                 for m in mismatches(self.profile, p.controller_caps)]
        caps = await self.caller.call(
            self.controller, "ControllerGetCapabilities",
            lambda s: s.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest()))
        advertised = {c.rpc.type for c in caps.capabilities if c.rpc is not None}
        found += [f"controller: {m}" for m in mismatches(self.profile, advertised, controller_mode=True)]
        if found:
            raise CapabilityMismatch("; ".join(found))

    async def _new_node(self, name: str, capacity: int) -> SimNode:
        root = self.root / name
        await anyio.Path(root / "kubelet").mkdir(parents=True)
        driver = DriverInstance(root, [], self.stats, self.profile.deadlines.start_seconds)
        return SimNode(name, root, capacity, driver, many_volumes=self.many_volumes)

    async def _start_node(self, node: SimNode) -> None:
        await self.profile.prepare(node)
        node.driver.argv_tail = ["--node-id", node.name, "--driver-name", DRIVER_NAME,
                                 "--kubelet-dir", str(node.kubelet_dir), *self.profile.driver_args(node)]
        await node.driver.start()
        await self.provisioners[node.name].startup()

    # -- flows ----------------------------------------------------------------------------------------------
    def new_claim(self, name: str, size_bytes: int, *, fs_type: str = "ext4",
                  volume_mode: VolumeMode = VolumeMode.FILESYSTEM) -> Claim:
        claim = Claim(name, size_bytes, self.storage_class(fs_type), volume_mode)
        self.claims[claim.uid] = claim
        return claim

    async def schedule(self, pod: Pod, *, fresh_capacity: bool = True) -> str:
        """Place the pod and provision its unbound claims on the chosen node, rescheduling on exhaustion."""
        assert self.scheduler is not None
        for _ in range(SCHEDULING_ATTEMPTS):
            if fresh_capacity:
                classes = {c.storage_class.name: c.storage_class for c in pod.claims if c.pv is None}
                for sc in classes.values():
                    await self.scheduler.refresh(sc)
            node = self.scheduler.select(pod)
            try:
                for claim in pod.claims:
                    if claim.pv is None:
                        await self.provisioners[node].provision(claim)
                return node
            except Reschedule:
                fresh_capacity = True
        raise Unschedulable(f"pod {pod.name} still unschedulable after {SCHEDULING_ATTEMPTS} attempts")

    async def start_pod(self, pod: Pod, *, fresh_capacity: bool = True) -> dict[str, Path]:
        node = await self.schedule(pod, fresh_capacity=fresh_capacity)
        self.pods[pod.uid] = pod
        return await self.kubelets[node].run_pod(pod)

    async def delete_pod(self, pod: Pod) -> None:
        await self.kubelets[pod.node].stop_pod(pod)
        self.pods.pop(pod.uid, None)

    async def delete_claim(self, claim: Claim) -> None:
        if claim.pv is not None:
            await self.provisioners[claim.pv.node].delete(claim.pv)
            claim.pv = None
        self.claims.pop(claim.uid, None)

    async def cleanup(self) -> None:
        """What a namespace deletion does: pods first, then claims (and their volumes)."""
        for pod in list(self.pods.values()):
            await self.delete_pod(pod)
        for kubelet in self.kubelets.values():  # volumes a scenario staged without a pod
            for pv in list(kubelet.staged.values()):
                await kubelet.unstage(pv)
        if self.attacher is not None:
            for pv, node, _ in list(self.attacher.attachments.values()):
                await self.attacher.detach(pv, node)
        for claim in list(self.claims.values()):
            await self.delete_claim(claim)

    # -- faults ---------------------------------------------------------------------------------------------
    async def restart_driver(self, node: SimNode) -> None:
        await node.driver.kill9()
        await node.driver.start()

    async def reboot(self, node: SimNode) -> None:
        """kill -9, every mount under the kubelet dir and every loop device gone, driver and kubelet back."""
        self.stats.fault("node reboot")
        await node.driver.kill9()
        await anyio.to_thread.run_sync(host.unmount_all_under, node.kubelet_dir)
        await self.profile.reboot(node)
        await node.driver.start()
        await self.provisioners[node.name].startup()
        await self.kubelets[node.name].restart([p for p in self.pods.values() if p.node == node.name])

    # -- leaks ----------------------------------------------------------------------------------------------
    async def leaks(self) -> list[str]:
        assert self.caller is not None
        found: list[str] = []
        for name, node in self.nodes.items():
            kubelet = self.kubelets[name]
            owned = {c.pv.volume_handle for c in self.claims.values() if c.pv is not None and c.pv.node == name}
            snapshots = {handle for handle, where in self.snapshots.items() if where == name}
            staged = {pv.volume_handle for pv in kubelet.staged.values()}
            listed: set[str] = set()
            if node.driver.alive:
                resp = await self.caller.call(node.driver, "ListVolumes",
                                              lambda s: s.controller.list_volumes(csi.ListVolumesRequest()))
                listed = {e.volume.volume_id for e in resp.entries if e.volume is not None}
            found += [f"{name}: driver lists volume {v} that no PersistentVolume owns" for v in sorted(listed - owned)]
            found += [f"{name}: PersistentVolume's volume {v} is gone from the driver" for v in sorted(owned - listed)]
            found += self._mount_leaks(kubelet)
            found += await self.profile.leaks(node, owned | snapshots, staged)
        return found

    def _mount_leaks(self, kubelet: Kubelet) -> list[str]:
        expected = [kubelet.staging_path(pv) for pv in kubelet.staged.values()]
        expected += [m.target for m in kubelet.mounted.values()]
        # The driver's own directory below the kubelet's (its default --block-dir) holds a staged block
        # volume's device bind, and only while the volume is staged.
        block_dir = kubelet.root / "plugins" / DRIVER_NAME / "block"
        expected += [block_dir / pv.volume_handle for pv in kubelet.staged.values()
                     if pv.volume_mode is VolumeMode.BLOCK]
        return [f"{kubelet.node.name}: {leak}" for leak in leaks.stray_mounts(kubelet.root, expected)]

    # -- teardown -------------------------------------------------------------------------------------------
    async def teardown(self) -> None:
        """Force everything away, whatever the run left (never the graceful path; that is :meth:`cleanup`)."""
        drivers = [n.driver for n in self.nodes.values()] + ([self.controller] if self.controller else [])
        for driver in drivers:
            with contextlib.suppress(Exception):
                await driver.kill9()
            driver._close_log()
        async with anyio.create_task_group() as tg:  # the nodes are independent: tear them down side by side
            for node in self.nodes.values():
                tg.start_soon(self._teardown_node, node)

    async def _teardown_node(self, node: SimNode) -> None:
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(host.unmount_all_under, node.kubelet_dir)
        with contextlib.suppress(Exception):
            await self.profile.teardown(node)


def volume_of(claim: Claim) -> str:
    return require_pv(claim).volume_handle


@contextlib.asynccontextmanager
async def running_cluster(profile: BackendProfile, stats: Stats, rng: random.Random,
                          keep: bool = False, many_volumes: bool = False) -> AsyncIterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="e2e-sim-"))
    cluster = Cluster(profile, stats, rng, root, many_volumes=many_volumes)
    try:
        await cluster.start()
        yield cluster
    finally:
        with anyio.CancelScope(shield=True):
            await cluster.teardown()
        if not (keep or cluster.keep_root):
            await anyio.to_thread.run_sync(_remove_tree, root)


def _remove_tree(root: Path) -> None:
    import shutil

    if not leaks.mounts_under(root):
        shutil.rmtree(root, ignore_errors=True)


__all__ = ["MIB", "Cluster", "running_cluster", "volume_of"]
