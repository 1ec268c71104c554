"""Phase 2: crash consistency. Hundreds of lifecycle operations on the kubelet-free cluster (e2e/sim), with
the node driver SIGKILLed at random moments and at named fault points, restarted, and the callers retrying.

Each step picks an operation (provision = CreateVolume + attach + stage + publish + write; stop a pod; start it
again; write more; expand an xfs volume online; delete a claim) and a crash: none, ``kill -9`` after a random
delay, or a fault point armed through ``LOCALCSI_FAULT`` (:mod:`backends.faults`) for the driver that serves the
operation. A supervisor restarts a dead driver at once, as kubelet restarts a crashed container; the roles
retry UNAVAILABLE as the sidecars do. After every step:

* every acknowledged write reads back with its checksum (running pods each step; every volume at the end);
* each node's ListVolumes equals the claims the harness holds (no volume lost, none extra, none twice);
* no stray mount, loop device, image or record file (the e2e/sim leak checks);
* every metadata file parses as a JSON object in state ``ready`` (never half-written).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from csi.gen.csi import v1 as csi
from e2e.reliability.common import MIB, PhaseResult
from e2e.sim import workload
from e2e.sim.cluster import Cluster, running_cluster
from e2e.sim.driver import CallFailed
from e2e.sim.kubelet import require_pv
from e2e.sim.nodes import SimNode
from e2e.sim.objects import Claim, Pod
from e2e.sim.profiles import LoopfileProfile
from e2e.sim.roles import Unschedulable
from e2e.sim.stats import Stats

#: The driver arms its fault points from this variable (`localcsi serve` documents it; backends/faults.py).
FAULT_ENV_VAR = "LOCALCSI_FAULT"

FAULTS_BY_OP: dict[str, tuple[str, ...]] = {
    "provision": ("create.after_meta", "create.after_image", "create.after_ready", "stage.after_attach",
                  "stage.after_mkfs", "stage.after_mount"),
    "start": ("stage.after_attach", "stage.after_mount"),
    "expand": ("expand.after_grow",),
    "delete": ("delete.after_mark",),
    "stop": (),
    "write": (),
}
MAX_CLAIMS = 6
WRITE_BYTES = 256 * 1024
STEP_TIMEOUT = 120.0


@dataclass
class Tracked:
    claim: Claim
    xfs: bool
    pod: Pod | None = None
    written: list[workload.Written] = field(default_factory=list)


@dataclass
class Campaign:
    cluster: Cluster
    rng: random.Random
    result: PhaseResult
    tracked: list[Tracked] = field(default_factory=list)
    ops: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    serial: int = 0
    writes_acknowledged: int = 0
    writes_lost: int = 0
    leaks: int = 0

    # -- choosing --------------------------------------------------------------------------------------------
    def choose(self) -> tuple[str, Tracked | None]:
        running = [t for t in self.tracked if t.pod is not None]
        stopped = [t for t in self.tracked if t.pod is None]
        options: list[tuple[str, Tracked | None]] = []
        if len(self.tracked) < MAX_CLAIMS:
            options += [("provision", None)] * 3
        options += [("stop", t) for t in running] + [("write", t) for t in running]
        options += [("expand", t) for t in running if t.xfs]
        options += [("start", t) for t in stopped] + [("delete", t) for t in self.tracked]
        return self.rng.choice(options)

    def node_of(self, op: str, tracked: Tracked | None) -> SimNode:
        if tracked is not None and tracked.claim.pv is not None:
            return self.cluster.nodes[tracked.claim.pv.node]
        return self.cluster.nodes[self.rng.choice(sorted(self.cluster.nodes))]

    # -- operations ------------------------------------------------------------------------------------------
    async def provision(self, node: SimNode) -> Tracked:
        self.serial += 1
        xfs = self.rng.random() < 0.3
        claim = self.cluster.new_claim(f"crash-{self.serial}", (320 if xfs else 48) * MIB,
                                       fs_type="xfs" if xfs else "ext4")
        tracked = Tracked(claim, xfs)
        self.tracked.append(tracked)
        pod = Pod(f"crash-{self.serial}", [claim], node_selector=node.name)
        try:
            await self.cluster.start_pod(pod)
        except Unschedulable:  # the node is full (thin capacity is reserved): the scheduler's answer, not a fault
            self.tracked.remove(tracked)
            self.cluster.claims.pop(claim.uid, None)
            self.ops["provision refused: node full"] += 1
            return tracked
        tracked.pod = pod
        await self.write(tracked)
        return tracked

    async def write(self, tracked: Tracked) -> None:
        assert tracked.pod is not None
        path = self.cluster.kubelets[tracked.pod.node].target_path(tracked.pod, require_pv(tracked.claim))
        self.serial += 1
        done = await workload.write(path, block=False, seed=self.serial, length=WRITE_BYTES,
                                    name=f"w{self.serial}.bin")
        tracked.written.append(done)
        self.writes_acknowledged += 1

    async def start(self, tracked: Tracked) -> None:
        pod = Pod(f"{tracked.claim.name}-again-{self.serial}", [tracked.claim])
        await self.cluster.start_pod(pod)
        tracked.pod = pod
        path = self.cluster.kubelets[pod.node].target_path(pod, require_pv(tracked.claim))
        tracked.written = [workload.Written(path, w.block, w.offset, w.length, w.digest, w.name)
                           for w in tracked.written]
        await self.verify(tracked)

    async def stop(self, tracked: Tracked) -> None:
        assert tracked.pod is not None
        await self.cluster.delete_pod(tracked.pod)
        tracked.pod = None

    async def expand(self, tracked: Tracked) -> None:
        assert tracked.pod is not None and self.cluster.resizer is not None
        pv = require_pv(tracked.claim)
        listed = await self.cluster.caller.call(  # type: ignore[union-attr]
            self.cluster.nodes[pv.node].driver, "ControllerGetVolume",
            lambda s: s.controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=pv.volume_handle)))
        current = listed.volume.capacity_bytes if listed.volume else pv.capacity_bytes
        new_size = current + 32 * MIB
        await self.cluster.resizer.expand(pv, new_size)
        grown = await self.cluster.kubelets[pv.node].expand(tracked.pod, pv, new_size)
        self.result.check(grown >= new_size, f"NodeExpandVolume answered {grown} bytes for {new_size}")

    async def delete(self, tracked: Tracked) -> None:
        if tracked.pod is not None:
            await self.stop(tracked)
        await self.cluster.delete_claim(tracked.claim)
        self.tracked.remove(tracked)

    async def verify(self, tracked: Tracked) -> None:
        for written in tracked.written:
            try:
                await workload.verify(written, self.cluster.stats)
            except (workload.DataMismatch, OSError) as exc:
                self.writes_lost += 1
                self.result.fail(f"acknowledged write {written.name} of {tracked.claim.name} lost: {exc}")

    def operation(self, op: str, tracked: Tracked | None, node: SimNode) -> Callable[[], Awaitable[object]]:
        if op == "provision":
            return lambda: self.provision(node)
        assert tracked is not None
        action: Callable[[Tracked], Awaitable[object]] = {
            "stop": self.stop, "start": self.start, "write": self.write, "expand": self.expand, "delete": self.delete,
        }[op]
        return lambda: action(tracked)

    # -- one step --------------------------------------------------------------------------------------------
    async def step(self) -> None:
        op, tracked = self.choose()
        node = self.node_of(op, tracked)
        faults = FAULTS_BY_OP[op]
        roll = self.rng.random()
        crash = "none"
        if roll < 0.45 and faults:
            crash = self.rng.choice(faults)
            await self.arm(node, crash)
        elif roll < 0.85 and op != "write":  # a write goes to the kernel, not the driver
            crash = "random-kill"
        self.ops[op] += 1
        run = self.operation(op, tracked, node)
        died_before = self.restarts
        try:
            with anyio.fail_after(STEP_TIMEOUT):
                await self.supervised(node, run, crash == "random-kill")
        except CallFailed as exc:
            if op == "expand" and exc.code == "RESOURCE_EXHAUSTED":  # no room on the node: a fair answer
                self.ops["expand refused: node full"] += 1
            else:
                self.result.fail(f"{op} (crash {crash}) failed: {exc}")
        except TimeoutError:
            self.result.fail(f"{op} (crash {crash}) did not converge within {STEP_TIMEOUT} s")
        if crash not in ("none", "random-kill"):
            if self.restarts > died_before:
                self.crashes[crash] += 1
            else:  # the armed driver never reached the point (e.g. expand already done): disarm it
                self.crashes[f"{crash} (not reached)"] += 1
                await node.driver.kill9()
                await node.driver.start()
        await self.invariants(f"after {op} with crash {crash}")

    async def arm(self, node: SimNode, point: str) -> None:
        await node.driver.kill9()
        os.environ[FAULT_ENV_VAR] = f"{point}:kill"
        try:
            await node.driver.start()
        finally:
            os.environ.pop(FAULT_ENV_VAR, None)

    async def supervised(self, node: SimNode, run: Callable[[], Awaitable[object]], random_kill: bool) -> None:
        """Run the operation while restarting the node's driver whenever it dies; maybe kill it once."""
        done = anyio.Event()

        async def operation() -> None:
            try:
                await run()
            finally:
                done.set()

        async def supervisor() -> None:
            while not done.is_set():
                if not node.driver.alive:
                    self.restarts += 1
                    await node.driver.kill9()  # reaps it and closes the old channel
                    await node.driver.start()
                    await self.cluster.provisioners[node.name].startup()
                with anyio.move_on_after(0.02):
                    await done.wait()

        async def killer() -> None:
            with anyio.move_on_after(self.rng.uniform(0.0, 0.3)):
                await done.wait()
            if done.is_set():
                self.crashes["random-kill (call finished first)"] += 1
            else:
                self.crashes["random-kill"] += 1
                await node.driver.kill9()

        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor)
            if random_kill:
                tg.start_soon(killer)
            await operation()
        if not node.driver.alive:
            self.restarts += 1
            await node.driver.kill9()
            await node.driver.start()

    # -- invariants ------------------------------------------------------------------------------------------
    async def invariants(self, when: str) -> None:
        for tracked in self.tracked:
            if tracked.pod is not None:
                await self.verify(tracked)
        for leak in await self.cluster.leaks():
            self.leaks += 1
            self.result.fail(f"{when}: {leak}")
        for node in self.cluster.nodes.values():
            for problem in await anyio.to_thread.run_sync(check_records, LoopfileProfile().data_dir(node)):
                self.result.fail(f"{when}: {problem}")
            resp = await self.cluster.caller.call(  # type: ignore[union-attr]
                node.driver, "ListVolumes", lambda s: s.controller.list_volumes(csi.ListVolumesRequest()))
            ids = [e.volume.volume_id for e in resp.entries if e.volume is not None]
            self.result.check(len(ids) == len(set(ids)), f"{when}: {node.name} lists a volume twice: {ids}")


def check_records(directory: Path) -> list[str]:
    """Every record parses and is ``ready``; no temporary file survives a restart."""
    problems = []
    for path in sorted(directory.rglob("*.json")) if directory.exists() else []:
        try:
            data = json.loads(path.read_bytes())
        except ValueError as exc:
            problems.append(f"record {path.name} is not valid JSON: {exc}")
            continue
        if not isinstance(data, dict) or data.get("state") != "ready":
            problems.append(f"record {path.name} is not a ready record: {str(data)[:120]}")
    return problems


async def run(steps: int, seed: int) -> PhaseResult:
    result = PhaseResult("crash")
    rng = random.Random(seed)
    stats = Stats()
    async with running_cluster(LoopfileProfile(), stats, rng) as cluster:
        campaign = Campaign(cluster, rng, result)
        for _ in range(steps):
            await campaign.step()
            if len(result.findings) > 20:
                result.fail("stopping early: too many findings")
                break
        for tracked in list(campaign.tracked):  # every acknowledged write, once more, then delete everything
            if tracked.pod is None:
                await campaign.start(tracked)
            await campaign.verify(tracked)
        await cluster.cleanup()
        campaign.tracked.clear()
        for leak in await cluster.leaks():
            campaign.leaks += 1
            result.fail(f"after cleanup: {leak}")
    result.figures.update({
        "steps": sum(v for k, v in campaign.ops.items() if "refused" not in k),
        "operations": dict(sorted(campaign.ops.items())),
        "rpcs_issued": sum(stats.operations.values()),
        "crashes": dict(sorted(campaign.crashes.items())),
        "fault_points_exercised": sorted(k for k in campaign.crashes if "(" not in k and k != "random-kill"),
        "driver_restarts": campaign.restarts,
        "writes_acknowledged": campaign.writes_acknowledged,
        "writes_lost": campaign.writes_lost,
        "bytes_verified": stats.bytes_verified,
        "leaks": campaign.leaks,
    })
    return result
