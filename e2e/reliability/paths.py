"""Phase: the node side attacked through the paths a request names (issue 15, items 1 and 6-12).

A request names paths; it never proves them. Each attack stages real volumes on a real driver, then sends
node calls whose paths point at what is not the request's volume (a foreign tmpfs, another volume's staging
path, the kubelet directory itself, a directory holding data) and checks two things: the answer's code, and
that what the path held is untouched afterwards (still mounted, same content, nothing created in it). The
attacks run on loopfile (an ext4 image directory of the phase's own) and on rawdisk (loop devices as disks):

* ``device-file-in-volume``: a pod's file named ``device`` at its volume's root survives unstage, and a
  non-empty ``device/`` directory never blocks unstage (item 1);
* ``unknown-id-on-foreign-mount``: NodeUnpublish and NodeUnstage of a well-formed id no volume has, at a
  foreign tmpfs, answer NOT_FOUND; NodeUnstage of such an id at volume B's staging path leaves B mounted;
  volume A named with B's paths is FAILED_PRECONDITION and B keeps its mounts (item 6);
* ``publish-from-another-staging``: NodePublish(A) from B's staging path, or from a foreign mount, is
  FAILED_PRECONDITION and A's target shows nothing of B's (item 7);
* ``kubelet-dir-itself``: the kubelet directory itself as staging or target path is INVALID_ARGUMENT and
  nothing is mounted over it (item 8);
* ``expand-another-volume``: NodeExpandVolume(A) at B's staging path is FAILED_PRECONDITION; B's filesystem
  keeps its size (item 9);
* ``stage-on-foreign-mount``: NodeStage, mount and block, onto a foreign tmpfs is FAILED_PRECONDITION and
  creates nothing in it (item 10);
* ``unstage-while-published``: FAILED_PRECONDITION, the staging mount and the published data stay (item 11);
* ``publish-over-data``: NodePublish onto a non-empty target directory is FAILED_PRECONDITION and its content
  stays; the volume's own later publish and unpublish then work (item 12).

On lvm (thick and thin) the same attacks run in the kernel lane, through the campaign's kernel phase
(tests/kernel/test_lvm_paths.py calls :func:`attack_all`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.reliability.common import MIB, NODE_ID, PhaseResult, filesystem_node
from e2e.reliability.states import block_cap, loop_disks, mount_cap, rawdisk_driver
from e2e.sim import host
from e2e.sim.driver import DriverInstance

UNKNOWN_ID = "lcv-" + "0" * 32
PRECIOUS = b"not the driver's\n"
SIZE = 64 * MIB


@dataclass
class Node:
    """A running driver and the kubelet directory it accepts paths below."""

    driver: DriverInstance
    kubelet_dir: Path

    @property
    def node(self) -> csi.NodeStub:
        return self.driver.client().node


class Vol:
    """One volume with the paths kubelet would give it."""

    def __init__(self, node: Node, name: str, cap: csi.VolumeCapability) -> None:
        self.n, self.name, self.cap = node, name, cap
        self.volume_id = ""
        self.staging = node.kubelet_dir / "plugins" / name / "globalmount"
        self.target = node.kubelet_dir / "pods" / name / ("dev" if cap.block is not None else "mount")

    async def create(self) -> Vol:
        reply = await self.n.driver.client().controller.create_volume(csi.CreateVolumeRequest(
            name=self.name, capacity_range=csi.CapacityRange(required_bytes=SIZE),
            volume_capabilities=[self.cap]), timeout=60)
        assert reply.volume is not None
        self.volume_id = reply.volume.volume_id
        return self

    def stage_request(self, staging: Path | None = None) -> csi.NodeStageVolumeRequest:
        return csi.NodeStageVolumeRequest(volume_id=self.volume_id, staging_target_path=str(staging or self.staging),
                                          volume_capability=self.cap)

    def publish_request(self, staging: Path | None = None, target: Path | None = None) -> csi.NodePublishVolumeRequest:
        return csi.NodePublishVolumeRequest(volume_id=self.volume_id, staging_target_path=str(staging or self.staging),
                                            target_path=str(target or self.target), volume_capability=self.cap)

    async def stage(self) -> None:
        await anyio.Path(self.staging).mkdir(parents=True, exist_ok=True)
        await self.n.node.node_stage_volume(self.stage_request(), timeout=60)

    async def publish(self) -> None:
        await anyio.Path(self.target.parent).mkdir(parents=True, exist_ok=True)
        await self.n.node.node_publish_volume(self.publish_request(), timeout=60)

    async def up(self) -> Vol:
        await self.create()
        await self.stage()
        await self.publish()
        return self

    async def unpublish(self, target: Path | None = None) -> None:
        await self.n.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
            volume_id=self.volume_id, target_path=str(target or self.target)), timeout=60)

    async def unstage(self, staging: Path | None = None) -> None:
        await self.n.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(staging or self.staging)), timeout=60)

    async def down(self) -> None:
        await self.unpublish()
        await self.unstage()
        await self.n.driver.client().controller.delete_volume(csi.DeleteVolumeRequest(volume_id=self.volume_id),
                                                               timeout=60)


async def code_of(call: Awaitable[object]) -> str:
    try:
        await call
    except GRPCError as exc:
        return exc.status.name
    return "OK"


def expect(findings: list[str], what: str, got: str, wanted: str) -> None:
    if got != wanted:
        findings.append(f"{what}: answered {got}, expected {wanted}")


def mounted(path: Path) -> bool:
    return leaks.mount_count(path) > 0


@contextlib.asynccontextmanager
async def foreign_tmpfs(path: Path) -> AsyncIterator[Path]:
    """A tmpfs nobody asked the driver about, holding one file; unmounted afterwards."""
    await anyio.Path(path).mkdir(parents=True, exist_ok=True)
    await host.arun(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(path)])
    try:
        (path / "precious").write_bytes(PRECIOUS)
        yield path
    finally:
        await host.arun(["umount", "-l", str(path)], check=False)


def intact(findings: list[str], what: str, foreign: Path) -> None:
    if not mounted(foreign):
        findings.append(f"{what}: the foreign mount at {foreign} was unmounted")
    elif not (foreign / "precious").is_file() or (foreign / "precious").read_bytes() != PRECIOUS:
        findings.append(f"{what}: the foreign mount at {foreign} lost its content")
    elif sorted(p.name for p in foreign.iterdir()) != ["precious"]:
        findings.append(f"{what}: the driver created {sorted(p.name for p in foreign.iterdir())} in {foreign}")


async def device_file_in_volume(node: Node, findings: list[str]) -> None:
    vol = await Vol(node, "pvc-device-file", mount_cap()).up()
    (vol.target / "device").write_bytes(PRECIOUS)
    await vol.unpublish()
    await vol.unstage()
    await vol.stage()
    await vol.publish()
    if not (vol.target / "device").is_file() or (vol.target / "device").read_bytes() != PRECIOUS:
        findings.append("a file named 'device' at the volume's root did not survive unstage")
    (vol.target / "device").unlink()
    (vol.target / "device").mkdir()
    (vol.target / "device" / "keep").write_bytes(PRECIOUS)
    await vol.unpublish()
    expect(findings, "NodeUnstage of a volume holding a non-empty 'device/'", await code_of(vol.unstage()), "OK")
    await vol.stage()
    await vol.publish()
    if not (vol.target / "device" / "keep").is_file():
        findings.append("the volume's 'device/keep' was lost at unstage")
    await vol.down()


async def unknown_id_on_foreign_mount(node: Node, findings: list[str]) -> None:
    async with foreign_tmpfs(node.kubelet_dir / "pods" / "foreign" / "mount") as foreign:
        expect(findings, "NodeUnpublish of an unknown id at a foreign mount", await code_of(
            node.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=UNKNOWN_ID,
                                                                            target_path=str(foreign)))), "NOT_FOUND")
        unstage = csi.NodeUnstageVolumeRequest(volume_id=UNKNOWN_ID, staging_target_path=str(foreign))
        expect(findings, "NodeUnstage of an unknown id at a foreign mount",
               await code_of(node.node.node_unstage_volume(unstage)), "NOT_FOUND")
        intact(findings, "unpublish/unstage of an unknown id", foreign)
        known = await Vol(node, "pvc-known", mount_cap()).create()
        expect(findings, "NodeUnpublish(A) at a foreign mount", await code_of(known.unpublish(foreign)),
               "FAILED_PRECONDITION")
        expect(findings, "NodeUnstage(A) at a foreign mount", await code_of(known.unstage(foreign)),
               "FAILED_PRECONDITION")
        intact(findings, "unpublish/unstage of volume A at a foreign mount", foreign)
    a = await Vol(node, "pvc-a", mount_cap()).up()
    b = await Vol(node, "pvc-b", mount_cap()).up()
    (b.target / "data").write_bytes(PRECIOUS)
    expect(findings, "NodeUnstage of an unknown id at B's staging path", await code_of(node.node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(volume_id=UNKNOWN_ID, staging_target_path=str(b.staging)))), "NOT_FOUND")
    expect(findings, "NodeUnpublish(A) at B's target", await code_of(a.unpublish(b.target)), "FAILED_PRECONDITION")
    expect(findings, "NodeUnstage(A) at B's staging path", await code_of(a.unstage(b.staging)), "FAILED_PRECONDITION")
    if not (mounted(b.staging) and mounted(b.target)) or (b.target / "data").read_bytes() != PRECIOUS:
        findings.append("volume B lost a mount or its data to calls naming A or an unknown id")
    await a.down()
    await b.down()
    await node.driver.client().controller.delete_volume(csi.DeleteVolumeRequest(volume_id=known.volume_id))


async def publish_from_another_staging(node: Node, findings: list[str]) -> None:
    a = await Vol(node, "pvc-reader", mount_cap()).create()
    await a.stage()
    b = await Vol(node, "pvc-secret", mount_cap()).up()
    (b.target / "secret").write_bytes(PRECIOUS)
    await anyio.Path(a.target.parent).mkdir(parents=True, exist_ok=True)
    expect(findings, "NodePublish(A) from B's staging path", await code_of(
        node.node.node_publish_volume(a.publish_request(staging=b.staging))), "FAILED_PRECONDITION")
    async with foreign_tmpfs(node.kubelet_dir / "plugins" / "foreign" / "globalmount") as foreign:
        expect(findings, "NodePublish(A) from a foreign mount", await code_of(
            node.node.node_publish_volume(a.publish_request(staging=foreign))), "FAILED_PRECONDITION")
        intact(findings, "publish from a foreign mount", foreign)
    if mounted(a.target) or (a.target / "secret").exists():
        findings.append("A's target exposes another volume's data")
    await a.publish()
    await a.down()
    await b.down()


async def kubelet_dir_itself(node: Node, findings: list[str]) -> None:
    vol = await Vol(node, "pvc-root", mount_cap()).create()
    expect(findings, "NodeStage at the kubelet directory itself", await code_of(
        node.node.node_stage_volume(vol.stage_request(node.kubelet_dir))), "INVALID_ARGUMENT")
    await vol.stage()
    for target in (node.kubelet_dir, Path(str(node.kubelet_dir) + "/")):
        expect(findings, f"NodePublish at {target}", await code_of(
            node.node.node_publish_volume(vol.publish_request(target=target))), "INVALID_ARGUMENT")
    if mounted(node.kubelet_dir):
        findings.append("a volume was mounted over the whole kubelet directory")
    await vol.publish()
    await vol.down()


async def expand_another_volume(node: Node, findings: list[str]) -> None:
    a = await Vol(node, "pvc-grow-a", mount_cap()).up()
    b = await Vol(node, "pvc-grow-b", mount_cap()).up()
    before = os.statvfs(b.target).f_blocks
    expect(findings, "NodeExpandVolume(A) at B's staging path", await code_of(node.node.node_expand_volume(
        csi.NodeExpandVolumeRequest(volume_id=a.volume_id, volume_path=str(b.staging),
                                    capacity_range=csi.CapacityRange(required_bytes=2 * SIZE)))),
           "FAILED_PRECONDITION")
    if os.statvfs(b.target).f_blocks != before:
        findings.append("NodeExpandVolume(A) changed B's filesystem")
    await a.down()
    await b.down()


async def stage_on_foreign_mount(node: Node, findings: list[str]) -> None:
    for cap, kind in ((mount_cap(), "mount"), (block_cap(), "block")):
        vol = await Vol(node, f"pvc-onto-{kind}", cap).create()
        async with foreign_tmpfs(vol.staging) as foreign:
            expect(findings, f"{kind} NodeStage onto a foreign mount", await code_of(
                node.node.node_stage_volume(vol.stage_request())), "FAILED_PRECONDITION")
            expect(findings, f"{kind} NodeUnstage of the foreign mount", await code_of(vol.unstage()),
                   "FAILED_PRECONDITION")
            intact(findings, f"{kind} stage onto a foreign mount", foreign)
        await node.driver.client().controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


async def unstage_while_published(node: Node, findings: list[str]) -> None:
    for cap, kind in ((mount_cap(), "mount"), (block_cap(), "block")):
        vol = await Vol(node, f"pvc-busy-{kind}", cap).up()
        expect(findings, f"{kind} NodeUnstage while published", await code_of(vol.unstage()), "FAILED_PRECONDITION")
        if kind == "mount":
            (vol.target / "still").write_bytes(PRECIOUS)
            if not mounted(vol.staging):
                findings.append("NodeUnstage while published removed the staging mount")
        elif not mounted(vol.target):
            findings.append("NodeUnstage while published unbound the block target")
        await vol.publish()  # the staged volume still publishes
        await vol.down()


async def publish_over_data(node: Node, findings: list[str]) -> None:
    vol = await Vol(node, "pvc-over", mount_cap()).create()
    await vol.stage()
    await anyio.Path(vol.target).mkdir(parents=True, exist_ok=True)
    (vol.target / "someone-elses").write_bytes(PRECIOUS)
    expect(findings, "NodePublish onto a non-empty directory", await code_of(
        node.node.node_publish_volume(vol.publish_request())), "FAILED_PRECONDITION")
    if mounted(vol.target) or (vol.target / "someone-elses").read_bytes() != PRECIOUS:
        findings.append("NodePublish hid or changed a non-empty directory's content")
    (vol.target / "someone-elses").unlink()
    await vol.publish()
    expect(findings, "NodeUnpublish after a refused publish", await code_of(vol.unpublish()), "OK")
    await vol.down()


Attack = Callable[[Node, list[str]], Awaitable[None]]
ATTACKS: dict[str, Attack] = {
    "device-file-in-volume": device_file_in_volume,
    "unknown-id-on-foreign-mount": unknown_id_on_foreign_mount,
    "publish-from-another-staging": publish_from_another_staging,
    "kubelet-dir-itself": kubelet_dir_itself,
    "expand-another-volume": expand_another_volume,
    "stage-on-foreign-mount": stage_on_foreign_mount,
    "unstage-while-published": unstage_while_published,
    "publish-over-data": publish_over_data,
}


@contextlib.asynccontextmanager
async def loopfile_node() -> AsyncIterator[Node]:
    async with filesystem_node("paths", "ext4", 1024 * MIB) as fs:
        yield Node(fs.driver, fs.kubelet_dir)


@contextlib.asynccontextmanager
async def rawdisk_node() -> AsyncIterator[Node]:
    async with loop_disks(8, SIZE + 4 * MIB) as disks:
        driver = rawdisk_driver(disks, "driver")
        kubelet = disks / "driver" / "kubelet"
        kubelet.mkdir()
        driver.argv_tail = [*driver.argv_tail, "--kubelet-dir", str(kubelet)]
        try:
            await driver.start()
            yield Node(driver, kubelet)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await driver.kill9()
                driver._close_log()
                for point in sorted(leaks.mounts_under(kubelet), key=len, reverse=True):
                    await host.arun(["umount", "-l", point], check=False)


NODES: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Node]]] = {
    "loopfile": loopfile_node, "rawdisk": rawdisk_node,
}


async def attack_all(node: Node) -> dict[str, list[str]]:
    """Every attack against ``node``'s driver: attack name -> its findings (none: it held)."""
    found: dict[str, list[str]] = {}
    for name, attack in ATTACKS.items():
        findings: list[str] = []
        try:
            await attack(node, findings)
        except Exception as exc:
            findings.append(f"the attack itself failed: {type(exc).__name__}: {exc}")
        found[name] = findings
    left = leaks.mounts_under(node.kubelet_dir)
    if left:
        found.setdefault("afterwards", []).append(f"mounts left under the kubelet directory: {left}")
    return found


async def run() -> PhaseResult:
    result = PhaseResult("paths")
    outcomes: dict[str, str] = {}
    for backend, make in NODES.items():
        async with make() as node:
            for name, findings in (await attack_all(node)).items():
                if name in ATTACKS:
                    outcomes[f"{backend}/{name}"] = "held" if not findings else "FAILED"
                for finding in findings:
                    result.fail(f"{backend}/{name}: {finding}")
    result.figures.update({"attacks": outcomes, "attacks_run": len(outcomes), "node": NODE_ID,
                           "held": sum(1 for o in outcomes.values() if o == "held")})
    return result
