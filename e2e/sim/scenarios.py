"""The scenarios: each one a whole lifecycle as Kubernetes drives it, with checks a user depends on.

A scenario gets a fresh two-node cluster, raises on any failure, and leaves
cleanup of its claims to the runner (which deletes them through the sidecars'
calls and then checks for leaks).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from backends.ids import volume_id_for
from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.sim import workload
from e2e.sim.cluster import Cluster
from e2e.sim.driver import Caller, CallFailed, Stubs
from e2e.sim.kubelet import require_pv
from e2e.sim.nodes import SimNode
from e2e.sim.objects import Claim, Pod, StorageClass, VolumeMode
from e2e.sim.profiles import MIB, Capability, mismatch
from e2e.sim.roles import Unschedulable

Scenario = Callable[[Cluster], Awaitable[str]]
SCENARIOS: dict[str, Scenario] = {}
#: Scenarios that create many volumes at once (backends with a disk per volume prepare more disks).
MANY_VOLUMES = {"burst-100"}
KILL_ROUNDS = 4


class ScenarioFailure(AssertionError):
    """A check a scenario makes did not hold."""


class Skip(Exception):
    """The scenario needs a capability the profile declares absent; the message names it."""


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioFailure(message)


def caller_of(cluster: Cluster) -> Caller:
    if cluster.caller is None:
        raise RuntimeError("cluster is not started")
    return cluster.caller


async def listed_ids(cluster: Cluster, node: SimNode) -> set[str]:
    resp = await caller_of(cluster).call(node.driver, "ListVolumes",
                                         lambda s: s.controller.list_volumes(csi.ListVolumesRequest()))
    return {e.volume.volume_id for e in resp.entries if e.volume is not None}


async def assert_no_leaks(cluster: Cluster, when: str) -> None:
    found = await cluster.leaks()
    check(not found, f"leaks {when}: {found}")


def require(cluster: Cluster, capability: Capability) -> None:
    """Go on when the profile expects ``capability``; skip only when the profile declares it absent.

    A capability the profile expects but the driver does not advertise fails (the cluster's start-up check
    already did; this is the scenario's own word on it), never skips.
    """
    for name, provisioner in cluster.provisioners.items():
        problem = mismatch(cluster.profile, capability, provisioner.controller_caps)
        if problem:
            raise ScenarioFailure(f"{name}: {problem}")
    if not cluster.profile.capabilities[capability]:
        raise Skip(f"the {cluster.profile.name} profile declares no {capability.value}")


def single_mount(path: Path) -> None:
    count = leaks.mount_count(path)
    check(count == 1, f"{path} is mounted {count} times, expected exactly once")


# -- 1. StatefulSet-style claim ---------------------------------------------------------------------------------
@scenario("statefulset")
async def statefulset(cluster: Cluster) -> str:
    claim = cluster.new_claim("data-web-0", 64 * MIB)
    pod = Pod("web-0", [claim])
    paths = await cluster.start_pod(pod)
    written = await workload.write(paths[claim.name], block=False, seed=101, length=4 * MIB)
    pv = require_pv(claim)
    stats = await cluster.kubelets[pod.node].volume_stats(pod, pv)
    check(stats.volume_condition is None or not stats.volume_condition.abnormal, "published volume reported abnormal")
    await cluster.delete_pod(pod)
    check(not leaks.mounts_under(cluster.nodes[pv.node].kubelet_dir), "mounts remain after the pod went away")
    again = Pod("web-0", [claim])
    paths = await cluster.start_pod(again)
    check(again.node == pv.node, f"recreated pod landed on {again.node}, its volume lives on {pv.node}")
    await workload.verify(written, cluster.stats, path=paths[claim.name])
    return f"pod recreated on {again.node}, 4 MiB intact"


# -- 2. capacity-aware placement --------------------------------------------------------------------------------
@scenario("capacity-placement")
async def capacity_placement(cluster: Cluster) -> str:
    """Sizes derive from the published capacities, so every backend gets the same three decisions."""
    assert cluster.scheduler is not None
    sc = cluster.storage_class()
    await cluster.scheduler.refresh(sc)
    missing = [n for n in cluster.nodes if (sc.name, n) not in cluster.scheduler.capacities]
    check(not missing, f"GetCapacity as the external-provisioner sends it failed on {missing}: no "
                       "CSIStorageCapacity, so the scheduler would never place a pod there")
    roomy, tight = sorted(cluster.nodes, key=lambda n: largest_volume(cluster, sc, n), reverse=True)
    check(largest_volume(cluster, sc, roomy) > largest_volume(cluster, sc, tight) + 8 * MIB,
          "the nodes' capacities are too close for a placement decision")

    big_size = mib_floor((largest_volume(cluster, sc, roomy) + largest_volume(cluster, sc, tight)) // 2)
    big = cluster.new_claim("big", big_size)
    await cluster.start_pod(Pod("big-user", [big]))
    check(require_pv(big).node == roomy, f"{big_size >> 20} MiB claim placed on {require_pv(big).node}; "
                                         f"only {roomy} has room")

    await cluster.scheduler.refresh(sc)
    huge = cluster.new_claim("huge", max(largest_volume(cluster, sc, n) for n in cluster.nodes) + 64 * MIB)
    creates = cluster.stats.operations["CreateVolume"]
    try:
        await cluster.start_pod(Pod("huge-user", [huge]))
        raise ScenarioFailure("a claim larger than every node's free capacity was scheduled")
    except Unschedulable:
        pass
    check(cluster.stats.operations["CreateVolume"] == creates, "CreateVolume was sent for an unschedulable claim")

    # Two pods racing on one CSIStorageCapacity snapshot: the second must be refused, leave nothing, and reschedule.
    race_size = mib_floor(largest_volume(cluster, sc, tight))
    first, second = cluster.new_claim("race-1", race_size), cluster.new_claim("race-2", race_size)
    await cluster.start_pod(Pod("race-1", [first], node_selector=tight), fresh_capacity=False)
    exhausted = cluster.stats.errors["CreateVolume:RESOURCE_EXHAUSTED"]
    try:
        await cluster.start_pod(Pod("race-2", [second], node_selector=tight), fresh_capacity=False)
        raise ScenarioFailure("an over-capacity claim was provisioned")
    except Unschedulable:
        pass
    check(cluster.stats.errors["CreateVolume:RESOURCE_EXHAUSTED"] > exhausted,
          "the over-capacity CreateVolume was not answered RESOURCE_EXHAUSTED")
    for node in cluster.nodes.values():
        check(volume_id_for(second.pv_name) not in await listed_ids(cluster, node),
              f"refused claim left a volume on {node.name}")
    await assert_no_leaks(cluster, "after the refused claim")
    await misrouted_create(cluster, roomy, tight)
    await misrouted_stage(cluster, big, tight)
    return (f"{big_size >> 20} MiB on {roomy}, {huge.size_bytes >> 20} MiB unschedulable, "
            f"{race_size >> 20} MiB race on {tight} refused")


def largest_volume(cluster: Cluster, sc: StorageClass, node: str) -> int:
    assert cluster.scheduler is not None
    cap = cluster.scheduler.capacities[(sc.name, node)]
    return cap.maximum_volume_size or cap.capacity_bytes


def mib_floor(value: int) -> int:
    return value - value % MIB


async def misrouted_create(cluster: Cluster, here: str, elsewhere: str) -> None:
    """Fault: one node's driver receives a claim whose requisite topology names only another node."""
    cluster.stats.fault("CreateVolume outside requisite topology")
    claim = cluster.new_claim("misrouted", 64 * MIB)
    claim.selected_node = elsewhere
    request = cluster.provisioners[elsewhere].create_request(claim)
    node = cluster.nodes[here]
    try:
        await caller_of(cluster).once(node.driver, "CreateVolume", lambda s: s.controller.create_volume(request))
        raise ScenarioFailure(f"{here} created a volume whose requisite topology is {elsewhere} only")
    except CallFailed as exc:
        check(exc.code == "RESOURCE_EXHAUSTED",
              f"out-of-topology CreateVolume answered {exc.code}, the spec asks RESOURCE_EXHAUSTED")
    finally:
        cluster.claims.pop(claim.uid, None)
    check(volume_id_for(claim.pv_name) not in await listed_ids(cluster, node), f"{here} kept the misrouted volume")


async def misrouted_stage(cluster: Cluster, claim: Claim, elsewhere: str) -> None:
    """Fault: a volume attached to and staged on a node outside its topology must be refused, leaving no mount."""
    assert cluster.attacher is not None
    cluster.stats.fault("NodeStage outside topology")
    pv = require_pv(claim)
    node_b = cluster.nodes[elsewhere]
    kubelet = cluster.kubelets[elsewhere]
    await cluster.attacher.attach(pv, node_b)
    request = await kubelet.stage_request(pv)
    try:
        await caller_of(cluster).once(node_b.driver, "NodeStageVolume", lambda s: s.node.node_stage_volume(request))
        raise ScenarioFailure(f"{elsewhere} staged a volume that lives on {pv.node}")
    except CallFailed as exc:
        check(exc.code == "NOT_FOUND", f"staging a foreign volume answered {exc.code}, expected NOT_FOUND")
    check(leaks.mount_count(kubelet.staging_path(pv)) == 0, f"the refused stage left a mount on {elsewhere}")
    await cluster.attacher.detach(pv, node_b)
    staging = anyio.Path(kubelet.staging_path(pv))
    await staging.rmdir()
    await (staging.parent / "vol_data.json").unlink()
    await staging.parent.rmdir()


# -- 3. block volumes --------------------------------------------------------------------------------------------
@scenario("block-volume")
async def block_volume(cluster: Cluster) -> str:
    require(cluster, Capability.BLOCK)
    claim = cluster.new_claim("raw", 32 * MIB, volume_mode=VolumeMode.BLOCK)
    pod = Pod("db-0", [claim])
    paths = await cluster.start_pod(pod)
    mode = os.stat(paths[claim.name]).st_mode
    check(stat.S_ISBLK(mode), f"{paths[claim.name]} is not a block device")
    written = await workload.write(paths[claim.name], block=True, seed=303, length=2 * MIB)
    stats = await cluster.kubelets[pod.node].volume_stats(pod, require_pv(claim))
    check(bool(stats.usage) and stats.usage[0].total >= 32 * MIB, f"block volume stats: {stats.usage}")
    await cluster.delete_pod(pod)
    again = Pod("db-0", [claim])
    paths = await cluster.start_pod(again)
    await workload.verify(written, cluster.stats, path=paths[claim.name])
    return "2 MiB at offset 1 MiB intact across re-stage"


# -- 4. read-only publish ----------------------------------------------------------------------------------------
@scenario("read-only")
async def read_only(cluster: Cluster) -> str:
    claim = cluster.new_claim("shared", 64 * MIB)
    writer = Pod("writer", [claim])
    paths = await cluster.start_pod(writer)
    written = await workload.write(paths[claim.name], block=False, seed=404)
    reader = Pod("reader", [claim], read_only=True)
    reader_paths = await cluster.start_pod(reader)
    check(reader.node == writer.node, "reader pod was not placed with the volume")
    denied = await workload.write_denied(reader_paths[claim.name], block=False)
    check(bool(denied), "a pod with a read-only volume could write to it")
    await workload.verify(written, cluster.stats, path=reader_paths[claim.name])
    check(not await workload.write_denied(paths[claim.name], block=False),
          "the read-only publish made the writer's mount read-only too")
    return f"read-only pod refused ({denied}), writer still writable"


# -- 5. online expansion while writing ---------------------------------------------------------------------------
@scenario("online-expansion")
async def online_expansion(cluster: Cluster) -> str:
    assert cluster.resizer is not None
    require(cluster, Capability.ONLINE_EXPANSION)
    claim = cluster.new_claim("growing", 320 * MIB, fs_type="xfs")
    pod = Pod("logger", [claim])
    paths = await cluster.start_pod(pod)
    pv = require_pv(claim)
    kubelet = cluster.kubelets[pod.node]
    before = os.statvfs(paths[claim.name])
    written: list[workload.Written] = []
    stop = anyio.Event()

    async def writer() -> None:
        index = 0
        while not stop.is_set():
            written.append(await workload.write(paths[claim.name], block=False, seed=500 + index,
                                                length=2 * MIB, name=f"chunk-{index}.bin"))
            index += 1

    new_size = 640 * MIB
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await anyio.sleep(0.2)
        capacity, node_expansion = await cluster.resizer.expand(pv, new_size)
        check(capacity >= new_size, f"ControllerExpandVolume answered {capacity} bytes for {new_size}")
        if node_expansion:
            grown = await kubelet.expand(pod, pv, new_size)
            check(grown >= new_size, f"NodeExpandVolume answered {grown} bytes for {new_size}")
        await anyio.sleep(0.2)
        stop.set()
    after = os.statvfs(paths[claim.name])
    total_before, total_after = before.f_blocks * before.f_frsize, after.f_blocks * after.f_frsize
    check(total_after > total_before + 250 * MIB, f"filesystem grew from {total_before} to only {total_after} bytes")
    for chunk in written:
        await workload.verify(chunk, cluster.stats)
    listed = await caller_of(cluster).call(
        cluster.nodes[pv.node].driver, "ControllerGetVolume",
        lambda s: s.controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=pv.volume_handle)))
    check(listed.volume is not None and listed.volume.capacity_bytes >= new_size, "driver still reports the old size")
    return f"xfs grew {total_before >> 20} -> {total_after >> 20} MiB while {len(written)} chunks were written"


# -- 6. snapshot and restore -------------------------------------------------------------------------------------
@scenario("snapshot-restore")
async def snapshot_restore(cluster: Cluster) -> str:
    require(cluster, Capability.SNAPSHOTS)
    claim = cluster.new_claim("source", 64 * MIB)
    pod = Pod("source-user", [claim])
    paths = await cluster.start_pod(pod)
    written = await workload.write(paths[claim.name], block=False, seed=606)
    pv = require_pv(claim)
    snapshotter = cluster.snapshotters[pv.node]
    snapshot = await snapshotter.create(pv, "content-1")
    cluster.snapshots[snapshot.snapshot_id] = pv.node
    await workload.write(paths[claim.name], block=False, seed=607)  # the source moves on; the copy must not
    # The claim asks for the snapshot's restoreSize, as a user must (a whole-disk snapshot is the whole disk).
    restored = cluster.new_claim("restored", max(64 * MIB, snapshot.size_bytes))
    restored.snapshot_handle = snapshot.snapshot_id
    restored_paths = await cluster.start_pod(Pod("restored-user", [restored], node_selector=pv.node))
    check(require_pv(restored).node == pv.node, "restored claim landed away from its snapshot")
    await workload.verify(written, cluster.stats, path=restored_paths[restored.name])
    await cluster.cleanup()
    await snapshotter.delete(snapshot.snapshot_id)
    del cluster.snapshots[snapshot.snapshot_id]
    return "restored volume holds the data as of the snapshot"


# -- 7. a burst of claims ----------------------------------------------------------------------------------------
@scenario("burst-100")
async def burst(cluster: Cluster) -> str:
    assert cluster.scheduler is not None
    sc = cluster.storage_class()
    await cluster.scheduler.refresh(sc)
    pods = [Pod(f"burst-{i}", [cluster.new_claim(f"burst-{i}", 16 * MIB)]) for i in range(100)]

    async def place(pod: Pod) -> None:
        await cluster.schedule(pod, fresh_capacity=False)  # all 100 decided on one CSIStorageCapacity snapshot

    async with anyio.create_task_group() as tg:
        for pod in pods:
            tg.start_soon(place, pod)
    handles = [require_pv(p.claims[0]).volume_handle for p in pods]
    check(len(set(handles)) == 100, "two claims share a volume")
    placed = {n: sum(1 for p in pods if require_pv(p.claims[0]).node == n) for n in cluster.nodes}
    for node in cluster.nodes.values():
        listed = await listed_ids(cluster, node)
        mine = {require_pv(p.claims[0]).volume_handle for p in pods if require_pv(p.claims[0]).node == node.name}
        check(listed == mine, f"{node.name} lists {len(listed)} volumes, {len(mine)} were placed there")
    async with anyio.create_task_group() as tg:
        for pod in pods:
            tg.start_soon(cluster.delete_claim, pod.claims[0])
    for node in cluster.nodes.values():
        check(not await listed_ids(cluster, node), f"{node.name} still lists volumes after the burst")
    return f"100 claims placed {placed} and deleted concurrently"


async def pod_with_both_kinds(cluster: Cluster, pod_name: str, names: tuple[str, str],
                              seed: int) -> tuple[Pod, list[Claim], list[workload.Written]]:
    """A pod with a filesystem and a raw block claim, each written to once (seeds ``seed``, ``seed + 1``)."""
    claims = [cluster.new_claim(names[0], 64 * MIB),
              cluster.new_claim(names[1], 32 * MIB, volume_mode=VolumeMode.BLOCK)]
    pod = Pod(pod_name, claims)
    paths = await cluster.start_pod(pod)
    written = [await workload.write(paths[claim.name], block=claim.volume_mode is VolumeMode.BLOCK, seed=seed + i)
               for i, claim in enumerate(claims)]
    return pod, claims, written


# -- 8. node reboot ----------------------------------------------------------------------------------------------
@scenario("node-reboot")
async def node_reboot(cluster: Cluster) -> str:
    pod, claims, written = await pod_with_both_kinds(cluster, "db-0", ("state", "journal"), 801)
    node = cluster.nodes[pod.node]
    await cluster.reboot(node)
    kubelet = cluster.kubelets[node.name]
    for claim in claims:
        single_mount(kubelet.target_path(pod, require_pv(claim)))
    for data in written:
        await workload.verify(data, cluster.stats)
    await assert_no_leaks(cluster, "after the reboot")
    return f"{node.name} rebooted; both volumes re-staged with data intact"


# -- 9. kubelet restart ------------------------------------------------------------------------------------------
@scenario("kubelet-restart")
async def kubelet_restart(cluster: Cluster) -> str:
    assert cluster.attacher is not None
    pod, claims, written = await pod_with_both_kinds(cluster, "app-0", ("cache", "raw"), 901)
    kubelet = cluster.kubelets[pod.node]
    repeated = 0
    for _ in range(2):
        cluster.stats.fault("kubelet restart")
        repeated += await kubelet.restart([pod])
        await cluster.attacher.resync()
        for claim in claims:
            single_mount(kubelet.target_path(pod, require_pv(claim)))
        single_mount(kubelet.staging_path(require_pv(claims[0])))
        await assert_no_leaks(cluster, "after a kubelet restart")
    for data in written:
        await workload.verify(data, cluster.stats)
    return f"{repeated} stage/publish calls repeated, no stacked mounts"


# -- 10-12. driver killed during a call --------------------------------------------------------------------------
@dataclass(frozen=True)
class KillOutcome:
    delay: float
    landed: bool  # the call had not answered when the driver died
    code: str


async def kill_during(cluster: Cluster, node: SimNode, rpc: str, send: Callable[[Stubs], Awaitable[object]],
                      delay: float) -> KillOutcome:
    """Send one attempt, ``kill -9`` the node's driver ``delay`` s later, bring it back up."""
    result: dict[str, str] = {}

    async def attempt() -> None:
        try:
            await caller_of(cluster).once(node.driver, rpc, send)
            result["code"] = "OK"
        except CallFailed as exc:
            result["code"] = exc.code

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt)
        await anyio.sleep(delay)
        landed = "code" not in result
        await node.driver.kill9()
    cluster.stats.fault(f"kill -9 during {rpc}")
    await node.driver.start()
    await cluster.provisioners[node.name].startup()
    return KillOutcome(delay, landed, result.get("code", "?"))


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = anyio.current_time()
    await fn()
    return anyio.current_time() - start


def delays(cluster: Cluster, latency: float) -> list[float]:
    """Spread over the call's measured latency, with seeded jitter: early, middle, late, just after."""
    spots = [0.05, 0.35, 0.7, 1.1][:KILL_ROUNDS]
    return [max(0.0, latency * s * cluster.rng.uniform(0.7, 1.3)) for s in spots]


async def send_create(request: csi.CreateVolumeRequest, stubs: Stubs) -> object:
    return await stubs.controller.create_volume(request)


async def send_stage(request: csi.NodeStageVolumeRequest, stubs: Stubs) -> object:
    return await stubs.node.node_stage_volume(request)


async def send_delete(request: csi.DeleteVolumeRequest, stubs: Stubs) -> object:
    return await stubs.controller.delete_volume(request)


def describe(outcomes: list[KillOutcome]) -> str:
    landed = sum(o.landed for o in outcomes)
    spread = ", ".join(f"{o.delay * 1000:.0f}ms:{o.code}" for o in outcomes)
    return f"{landed}/{len(outcomes)} kills landed mid-call ({spread})"


@scenario("kill-during-create")
async def kill_during_create(cluster: Cluster) -> str:
    assert cluster.scheduler is not None
    sc = cluster.storage_class()
    probe = Pod("probe", [cluster.new_claim("probe", 64 * MIB)])
    latency = await timed(lambda: cluster.schedule(probe))
    outcomes = []
    for index, delay in enumerate(delays(cluster, latency)):
        await cluster.scheduler.refresh(sc)
        claim = cluster.new_claim(f"crash-create-{index}", 64 * MIB)
        cluster.scheduler.select(Pod(f"crash-create-{index}", [claim]))
        provisioner = cluster.provisioners[claim.selected_node]
        request = provisioner.create_request(claim)
        outcomes.append(await kill_during(cluster, provisioner.node, "CreateVolume",
                                          partial(send_create, request), delay))
        await provisioner.provision(claim)  # the provisioner's retry
        await assert_no_leaks(cluster, f"after kill -9 during CreateVolume (round {index})")
    return describe(outcomes)


@scenario("kill-during-stage")
async def kill_during_stage(cluster: Cluster) -> str:
    assert cluster.attacher is not None
    probe_claim = cluster.new_claim("probe", 64 * MIB)
    probe = Pod("probe", [probe_claim])
    await cluster.schedule(probe)
    probe_kubelet = cluster.kubelets[probe.node]
    await cluster.attacher.attach(require_pv(probe_claim), cluster.nodes[probe.node])
    latency = await timed(lambda: probe_kubelet.stage(require_pv(probe_claim)))
    outcomes = []
    for index, delay in enumerate(delays(cluster, latency)):
        claim = cluster.new_claim(f"crash-stage-{index}", 64 * MIB)
        pod = Pod(f"crash-stage-{index}", [claim])
        await cluster.schedule(pod)
        pv, node, kubelet = require_pv(claim), cluster.nodes[pod.node], cluster.kubelets[pod.node]
        await cluster.attacher.attach(pv, node)
        request = await kubelet.stage_request(pv)
        outcomes.append(await kill_during(cluster, node, "NodeStageVolume", partial(send_stage, request), delay))
        cluster.pods[pod.uid] = pod
        paths = await kubelet.run_pod(pod)  # kubelet's retry: stage again, then publish
        single_mount(kubelet.staging_path(pv))
        written = await workload.write(paths[claim.name], block=False, seed=1000 + index)
        await workload.verify(written, cluster.stats)
        await assert_no_leaks(cluster, f"after kill -9 during NodeStageVolume (round {index})")
    return describe(outcomes)


@scenario("kill-during-delete")
async def kill_during_delete(cluster: Cluster) -> str:
    pods = [Pod(f"crash-delete-{i}", [cluster.new_claim(f"crash-delete-{i}", 64 * MIB)])
            for i in range(KILL_ROUNDS + 1)]
    for pod in pods:
        await cluster.schedule(pod)
    first = pods.pop()
    latency = await timed(lambda: cluster.delete_claim(first.claims[0]))
    outcomes = []
    for index, (pod, delay) in enumerate(zip(pods, delays(cluster, latency), strict=True)):
        claim = pod.claims[0]
        pv = require_pv(claim)
        node = cluster.nodes[pv.node]
        request = csi.DeleteVolumeRequest(volume_id=pv.volume_handle)
        outcomes.append(await kill_during(cluster, node, "DeleteVolume", partial(send_delete, request), delay))
        await cluster.delete_claim(claim)  # the provisioner's retry
        check(pv.volume_handle not in await listed_ids(cluster, node), "deleted volume is still listed")
        await assert_no_leaks(cluster, f"after kill -9 during DeleteVolume (round {index})")
    return describe(outcomes)
