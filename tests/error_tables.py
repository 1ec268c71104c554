"""The CSI spec's error tables as data: one row per condition of each RPC, and the world the rows run against.

Used by tests/csi/test_error_tables.py (loopfile and rawdisk on the host) and tests/kernel/test_lvm_error_tables.py
(lvm in the kernel lane). A row names the RPC, the condition and the code; ``needs`` gates it on a controller
capability (a backend without it answers ``unadvertised`` when that is set, else the row does not apply).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from backends.base import snapshot_id_for, volume_id_for
from csi.gen.csi import v1 as csi
from e2e.leaks import mounts_under
from tests.nodepaths import UNKNOWN_ID, Volume
from tests.support import MIB, NODE_ID, Client, DriverProcess, connect, create_request, mount_cap

CRpc = csi.ControllerServiceCapabilityRpcType
Mode = csi.VolumeCapabilityAccessModeMode
IA, NF, AE, FP = Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS, Status.FAILED_PRECONDITION
RE, AB, UN = Status.RESOURCE_EXHAUSTED, Status.ABORTED, Status.UNIMPLEMENTED
UNKNOWN_SNAPSHOT = "lcs-" + "0" * 32
#: The attach limit (``--max-volumes-per-node``) the drivers run with: the world fills it.
ATTACH_LIMIT = 3
#: A path where no volume is published: csi-sanity's own.
RELATIVE = "some/path"


@dataclass
class World:
    """What the rows run against: two volumes staged and published, one only attached (the attach limit is then
    full), one only created, and a snapshot of that one when the backend keeps snapshots."""

    c: Client
    driver: DriverProcess
    caps: frozenset[CRpc]
    staged: Volume
    second: Volume
    busy: Volume
    plain: Volume
    snapshot_id: str = ""

    @classmethod
    async def build(cls, c: Client, driver: DriverProcess) -> World:
        reply = await c.controller.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
        caps = frozenset(cap.rpc.type for cap in reply.capabilities if cap.rpc is not None)
        staged = await Volume(c, driver, "pvc-staged", mount_cap()).up()
        staged.write(b"alive")
        second = await Volume(c, driver, "pvc-second", mount_cap()).up()
        busy = await Volume(c, driver, "pvc-busy", mount_cap()).create()
        await c.controller.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=busy.volume_id, node_id=NODE_ID, volume_capability=busy.cap))
        plain = await Volume(c, driver, "pvc-plain", mount_cap()).create()
        world = cls(c, driver, caps, staged, second, busy, plain)
        if CRpc.CREATE_DELETE_SNAPSHOT in caps:
            snap = await c.controller.create_snapshot(csi.CreateSnapshotRequest(
                source_volume_id=plain.volume_id, name="snap-plain"))
            assert snap.snapshot is not None
            world.snapshot_id = snap.snapshot.snapshot_id
        return world

    async def tear_down(self) -> None:
        if self.snapshot_id:
            await self.c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=self.snapshot_id))
        for vol in (self.staged, self.second):
            await vol.down()
        for vol in (self.busy, self.plain):
            await self.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
                volume_id=vol.volume_id, node_id=NODE_ID))
            await self.c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))

    def mounts(self) -> list[str]:
        return sorted(mounts_under(self.driver.kubelet_dir))

    def fresh(self, name: str) -> str:
        """A path below the kubelet directory that does not exist (its parent does)."""
        parent = self.driver.kubelet_dir / "fresh" / name
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent / "target")


Send = Callable[[World], Awaitable[object]]


@dataclass(frozen=True)
class Row:
    rpc: str
    condition: str
    expect: Status | None  # None: OK
    send: Send
    needs: CRpc | None = None
    unadvertised: Status | None = None

    def applies(self, world: World) -> tuple[bool, Status | None]:
        if self.needs is None or self.needs in world.caps:
            return True, self.expect
        return self.unadvertised is not None, self.unadvertised


async def check_rows(world: World, rows: list[Row]) -> list[str]:
    """Send every row that applies; one line for each that answered another code."""
    wrong = []
    for row in rows:
        applies, expected = row.applies(world)
        if not applies:
            continue
        try:
            await row.send(world)
            got, message = None, "OK"
        except GRPCError as exc:
            got, message = exc.status, exc.message or ""
        if got != expected:
            want = expected.name if expected else "OK"
            wrong.append(f"{row.rpc} ({row.condition}): want {want}, got {got.name if got else 'OK'}: {message}")
    return wrong


def expected_rpcs() -> set[str]:
    """Every Controller and Node call that has an error table (all but capabilities and node info)."""
    calls = {name for name in vars(csi.ControllerBase) | vars(csi.NodeBase) if not name.startswith("_")}
    return calls - {"controller_get_capabilities", "node_get_capabilities", "node_get_info"}


def rpcs_of(rows: list[Row]) -> set[str]:
    return {_snake(row.rpc) for row in rows}


def _snake(name: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")


# ---- request builders ----------------------------------------------------------------------------------------


def _clone(name: str, source_id: str) -> csi.CreateVolumeRequest:
    req = create_request(name)
    req.volume_content_source = csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=source_id))
    return req


def _restore(name: str, snapshot_id: str) -> csi.CreateVolumeRequest:
    req = create_request(name)
    req.volume_content_source = csi.VolumeContentSource(
        snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot_id))
    return req


def _cpub(volume_id: str, node_id: str = NODE_ID, cap: csi.VolumeCapability | None = None,
          readonly: bool = False) -> csi.ControllerPublishVolumeRequest:
    return csi.ControllerPublishVolumeRequest(volume_id=volume_id, node_id=node_id, volume_capability=cap,
                                              readonly=readonly)


def _stage(volume_id: str, staging: str, cap: csi.VolumeCapability | None = None,
           context: dict[str, str] | None = None) -> csi.NodeStageVolumeRequest:
    return csi.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=staging, volume_capability=cap,
                                      publish_context=context or {})


def _npub(volume_id: str, staging: str, target: str, cap: csi.VolumeCapability | None = None,
          readonly: bool = False) -> csi.NodePublishVolumeRequest:
    return csi.NodePublishVolumeRequest(volume_id=volume_id, staging_target_path=staging, target_path=target,
                                        volume_capability=cap, readonly=readonly)


def _unstage(volume_id: str, staging: str) -> csi.NodeUnstageVolumeRequest:
    return csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)


def _unpub(volume_id: str, target: str) -> csi.NodeUnpublishVolumeRequest:
    return csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)


def _stats(volume_id: str, path: str) -> csi.NodeGetVolumeStatsRequest:
    return csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)


def _expand(volume_id: str, size: int | None = 128 * MIB) -> csi.ControllerExpandVolumeRequest:
    return csi.ControllerExpandVolumeRequest(volume_id=volume_id, capacity_range=csi.CapacityRange(
        required_bytes=size) if size else None)


def _nexpand(volume_id: str, path: str) -> csi.NodeExpandVolumeRequest:
    return csi.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=path)


def _snap(name: str, source: str) -> csi.CreateSnapshotRequest:
    return csi.CreateSnapshotRequest(name=name, source_volume_id=source)


def _undo_rows(rpc: str, send: Callable[[World, str, str], Awaitable[object]],
               path_of_staged: Callable[[World], str]) -> list[Row]:
    """The rows NodeUnstageVolume and NodeUnpublishVolume share: what they undo sits at a path."""
    return [
        Row(rpc, "missing volume_id", IA, lambda w: send(w, "", w.fresh(f"{rpc}-noid"))),
        Row(rpc, "missing path, unknown id", IA, lambda w: send(w, UNKNOWN_ID, "")),
        Row(rpc, "unknown id", NF, lambda w: send(w, UNKNOWN_ID, path_of_staged(w))),
        Row(rpc, "the path holds another volume", FP, lambda w: send(w, w.second.volume_id, path_of_staged(w))),
        Row(rpc, "nothing of the volume's there (already undone)", None,
            lambda w: send(w, w.plain.volume_id, w.fresh(f"{rpc}-undone"))),
    ]


CAP = mount_cap()
MULTI = mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER)
ELSEWHERE = csi.TopologyRequirement(requisite=[csi.Topology(segments={"topology.localcsi.dev/node": "other-node"})])
SNAP, CLONE, EXPAND = CRpc.CREATE_DELETE_SNAPSHOT, CRpc.CLONE_VOLUME, CRpc.EXPAND_VOLUME


def _elsewhere() -> csi.CreateVolumeRequest:
    req = create_request("pvc-elsewhere")
    req.accessibility_requirements = ELSEWHERE
    return req


def _read_only_cap() -> csi.VolumeCapability:
    return mount_cap(mode=Mode.SINGLE_NODE_READER_ONLY)


ROWS: list[Row] = [
    # CreateVolume
    Row("CreateVolume", "missing name", IA, lambda w: w.c.controller.create_volume(create_request(""))),
    Row("CreateVolume", "missing volume_capabilities", IA,
        lambda w: w.c.controller.create_volume(csi.CreateVolumeRequest(name="pvc-nocaps"))),
    Row("CreateVolume", "missing name, unknown source", IA,
        lambda w: w.c.controller.create_volume(_clone("", UNKNOWN_ID))),
    Row("CreateVolume", "unsupported access mode", IA,
        lambda w: w.c.controller.create_volume(create_request("pvc-multi", cap=MULTI))),
    Row("CreateVolume", "unknown source volume", NF,
        lambda w: w.c.controller.create_volume(_clone("pvc-clone-unknown", UNKNOWN_ID)), CLONE),
    Row("CreateVolume", "unknown source snapshot", NF,
        lambda w: w.c.controller.create_volume(_restore("pvc-restore-unknown", UNKNOWN_SNAPSHOT)), SNAP),
    Row("CreateVolume", "wrong node (requisite topology)", RE, lambda w: w.c.controller.create_volume(_elsewhere())),
    Row("CreateVolume", "incompatible repeat (other size)", AE,
        lambda w: w.c.controller.create_volume(create_request(w.plain.name, 128 * MIB))),
    Row("CreateVolume", "exhausted capacity", RE,
        lambda w: w.c.controller.create_volume(create_request("pvc-huge", 1 << 50))),
    # DeleteVolume
    Row("DeleteVolume", "missing volume_id", IA, lambda w: w.c.controller.delete_volume(csi.DeleteVolumeRequest())),
    Row("DeleteVolume", "unknown id (already deleted)", None,
        lambda w: w.c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=UNKNOWN_ID))),
    Row("DeleteVolume", "in use (staged)", FP,
        lambda w: w.c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=w.staged.volume_id))),
    # ControllerPublishVolume
    Row("ControllerPublishVolume", "missing volume_id", IA,
        lambda w: w.c.controller.controller_publish_volume(_cpub("", cap=CAP))),
    Row("ControllerPublishVolume", "missing node_id, unknown id", IA,
        lambda w: w.c.controller.controller_publish_volume(_cpub(UNKNOWN_ID, "", CAP))),
    Row("ControllerPublishVolume", "missing volume_capability, unknown id", IA,
        lambda w: w.c.controller.controller_publish_volume(_cpub(UNKNOWN_ID))),
    Row("ControllerPublishVolume", "unknown id", NF,
        lambda w: w.c.controller.controller_publish_volume(_cpub(UNKNOWN_ID, cap=CAP))),
    Row("ControllerPublishVolume", "wrong node", NF,
        lambda w: w.c.controller.controller_publish_volume(_cpub(w.plain.volume_id, "other-node", CAP))),
    Row("ControllerPublishVolume", "incompatible repeat (read-only)", AE,
        lambda w: w.c.controller.controller_publish_volume(_cpub(w.staged.volume_id, cap=CAP, readonly=True))),
    Row("ControllerPublishVolume", "exhausted (attach limit)", RE,
        lambda w: w.c.controller.controller_publish_volume(_cpub(w.plain.volume_id, cap=CAP))),
    # ControllerUnpublishVolume
    Row("ControllerUnpublishVolume", "missing volume_id", IA,
        lambda w: w.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(node_id=NODE_ID))),
    Row("ControllerUnpublishVolume", "unknown id (already unpublished)", None,
        lambda w: w.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
            volume_id=UNKNOWN_ID, node_id=NODE_ID))),
    # ValidateVolumeCapabilities
    Row("ValidateVolumeCapabilities", "missing volume_id", IA,
        lambda w: w.c.controller.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_capabilities=[CAP]))),
    Row("ValidateVolumeCapabilities", "missing volume_capabilities, unknown id", IA,
        lambda w: w.c.controller.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=UNKNOWN_ID))),
    Row("ValidateVolumeCapabilities", "unknown id", NF,
        lambda w: w.c.controller.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=UNKNOWN_ID, volume_capabilities=[CAP]))),
    Row("ValidateVolumeCapabilities", "unsupported capability (answered, not an error)", None,
        lambda w: w.c.controller.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=w.plain.volume_id, volume_capabilities=[MULTI]))),
    # ListVolumes / ListSnapshots / GetCapacity
    Row("ListVolumes", "starting_token not issued", AB,
        lambda w: w.c.controller.list_volumes(csi.ListVolumesRequest(starting_token="bogus"))),
    Row("ListVolumes", "negative max_entries", IA,
        lambda w: w.c.controller.list_volumes(csi.ListVolumesRequest(max_entries=-1))),
    Row("ListSnapshots", "starting_token not issued", AB,
        lambda w: w.c.controller.list_snapshots(csi.ListSnapshotsRequest(starting_token="bogus")), SNAP, UN),
    Row("GetCapacity", "another node's topology (answered 0)", None,
        lambda w: w.c.controller.get_capacity(csi.GetCapacityRequest(accessible_topology=ELSEWHERE.requisite[0]))),
    # ControllerGetVolume
    Row("ControllerGetVolume", "missing volume_id", IA,
        lambda w: w.c.controller.controller_get_volume(csi.ControllerGetVolumeRequest())),
    Row("ControllerGetVolume", "unknown id", NF,
        lambda w: w.c.controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=UNKNOWN_ID))),
    # ControllerExpandVolume
    Row("ControllerExpandVolume", "missing volume_id", IA,
        lambda w: w.c.controller.controller_expand_volume(_expand("")), EXPAND, UN),
    Row("ControllerExpandVolume", "missing capacity_range, unknown id", IA,
        lambda w: w.c.controller.controller_expand_volume(_expand(UNKNOWN_ID, None)), EXPAND, UN),
    Row("ControllerExpandVolume", "unknown id", NF,
        lambda w: w.c.controller.controller_expand_volume(_expand(UNKNOWN_ID)), EXPAND, UN),
    Row("ControllerExpandVolume", "exhausted capacity", RE,
        lambda w: w.c.controller.controller_expand_volume(_expand(w.plain.volume_id, 1 << 50)), EXPAND, UN),
    Row("ControllerModifyVolume", "not offered", UN,
        lambda w: w.c.controller.controller_modify_volume(csi.ControllerModifyVolumeRequest(
            volume_id=w.plain.volume_id))),
    # CreateSnapshot / DeleteSnapshot / GetSnapshot
    Row("CreateSnapshot", "missing name, unknown source", IA,
        lambda w: w.c.controller.create_snapshot(_snap("", UNKNOWN_ID)), SNAP, UN),
    Row("CreateSnapshot", "missing source_volume_id", IA,
        lambda w: w.c.controller.create_snapshot(_snap("snap-nosource", "")), SNAP, UN),
    Row("CreateSnapshot", "unknown source", NF,
        lambda w: w.c.controller.create_snapshot(_snap("snap-unknown", UNKNOWN_ID)), SNAP, UN),
    Row("CreateSnapshot", "incompatible repeat (other source)", AE,
        lambda w: w.c.controller.create_snapshot(_snap("snap-plain", w.staged.volume_id)), SNAP),
    Row("DeleteSnapshot", "missing snapshot_id", IA,
        lambda w: w.c.controller.delete_snapshot(csi.DeleteSnapshotRequest()), SNAP, UN),
    Row("DeleteSnapshot", "unknown id (already deleted)", None,
        lambda w: w.c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=UNKNOWN_SNAPSHOT)), SNAP),
    Row("GetSnapshot", "missing snapshot_id", IA,
        lambda w: w.c.controller.get_snapshot(csi.GetSnapshotRequest()), CRpc.GET_SNAPSHOT, UN),
    Row("GetSnapshot", "unknown id", NF,
        lambda w: w.c.controller.get_snapshot(csi.GetSnapshotRequest(snapshot_id=UNKNOWN_SNAPSHOT)),
        CRpc.GET_SNAPSHOT, UN),
    # NodeStageVolume
    Row("NodeStageVolume", "missing volume_id", IA,
        lambda w: w.c.node.node_stage_volume(_stage("", w.fresh("stage-noid"), CAP))),
    Row("NodeStageVolume", "missing staging_target_path, unknown id", IA,
        lambda w: w.c.node.node_stage_volume(_stage(UNKNOWN_ID, "", CAP))),
    Row("NodeStageVolume", "missing volume_capability, unknown id", IA,
        lambda w: w.c.node.node_stage_volume(_stage(UNKNOWN_ID, w.fresh("stage-nocap")))),
    Row("NodeStageVolume", "staging path is the kubelet directory", IA,
        lambda w: w.c.node.node_stage_volume(_stage(w.plain.volume_id, str(w.driver.kubelet_dir), CAP))),
    Row("NodeStageVolume", "unknown id", NF,
        lambda w: w.c.node.node_stage_volume(_stage(UNKNOWN_ID, w.fresh("stage-unknown"), CAP))),
    Row("NodeStageVolume", "wrong node (publish context)", FP,
        lambda w: w.c.node.node_stage_volume(_stage(w.plain.volume_id, w.fresh("stage-wrong-node"), CAP,
                                                    {"localcsi.dev/node": "other-node"}))),
    Row("NodeStageVolume", "incompatible repeat (read-only)", AE,
        lambda w: w.c.node.node_stage_volume(_stage(w.staged.volume_id, str(w.staged.staging), _read_only_cap()))),
    Row("NodeStageVolume", "another volume's staging path", FP,
        lambda w: w.c.node.node_stage_volume(_stage(w.plain.volume_id, str(w.staged.staging), CAP))),
    # NodeUnstageVolume (and NodeUnpublishVolume, below: one table for the two undo calls)
    *_undo_rows("NodeUnstageVolume", lambda w, vid, path: w.c.node.node_unstage_volume(_unstage(vid, path)),
                lambda w: str(w.staged.staging)),
    Row("NodeUnstageVolume", "still published", FP,
        lambda w: w.c.node.node_unstage_volume(_unstage(w.staged.volume_id, str(w.staged.staging)))),
    # NodePublishVolume
    Row("NodePublishVolume", "missing volume_id", IA,
        lambda w: w.c.node.node_publish_volume(_npub("", str(w.staged.staging), w.fresh("p-noid"), CAP))),
    Row("NodePublishVolume", "missing target_path, unknown id", IA,
        lambda w: w.c.node.node_publish_volume(_npub(UNKNOWN_ID, str(w.staged.staging), "", CAP))),
    Row("NodePublishVolume", "missing volume_capability, unknown id (and no staging path)", IA,
        lambda w: w.c.node.node_publish_volume(_npub(UNKNOWN_ID, "", w.fresh("p-nocap")))),
    Row("NodePublishVolume", "unknown id", NF,
        lambda w: w.c.node.node_publish_volume(_npub(UNKNOWN_ID, str(w.staged.staging), w.fresh("p-unknown"), CAP))),
    Row("NodePublishVolume", "staging_target_path not set", FP,
        lambda w: w.c.node.node_publish_volume(_npub(w.staged.volume_id, "", w.fresh("p-nostaging"), CAP))),
    Row("NodePublishVolume", "not staged", FP,
        lambda w: w.c.node.node_publish_volume(_npub(w.plain.volume_id, w.fresh("p-stage"), w.fresh("p-plain"),
                                                     CAP))),
    Row("NodePublishVolume", "incompatible repeat (read-only)", AE,
        lambda w: w.c.node.node_publish_volume(_npub(w.staged.volume_id, str(w.staged.staging), str(w.staged.target),
                                                     CAP, readonly=True))),
    Row("NodePublishVolume", "another volume's staging path", FP,
        lambda w: w.c.node.node_publish_volume(_npub(w.second.volume_id, str(w.staged.staging), w.fresh("p-from-b"),
                                                     CAP))),
    Row("NodePublishVolume", "target holds another volume", FP,
        lambda w: w.c.node.node_publish_volume(_npub(w.second.volume_id, str(w.second.staging),
                                                     str(w.staged.target), CAP))),
    *_undo_rows("NodeUnpublishVolume", lambda w, vid, path: w.c.node.node_unpublish_volume(_unpub(vid, path)),
                lambda w: str(w.staged.target)),
    # NodeGetVolumeStats
    Row("NodeGetVolumeStats", "missing volume_id", IA,
        lambda w: w.c.node.node_get_volume_stats(_stats("", str(w.staged.target)))),
    Row("NodeGetVolumeStats", "missing volume_path, unknown id", IA,
        lambda w: w.c.node.node_get_volume_stats(_stats(UNKNOWN_ID, ""))),
    Row("NodeGetVolumeStats", "unknown id", NF,
        lambda w: w.c.node.node_get_volume_stats(_stats(UNKNOWN_ID, RELATIVE))),
    Row("NodeGetVolumeStats", "relative path", NF,
        lambda w: w.c.node.node_get_volume_stats(_stats(w.staged.volume_id, RELATIVE))),
    Row("NodeGetVolumeStats", "another volume's target", NF,
        lambda w: w.c.node.node_get_volume_stats(_stats(w.second.volume_id, str(w.staged.target)))),
    # NodeExpandVolume
    Row("NodeExpandVolume", "missing volume_id", IA,
        lambda w: w.c.node.node_expand_volume(_nexpand("", str(w.staged.target))), EXPAND),
    Row("NodeExpandVolume", "missing volume_path, unknown id", IA,
        lambda w: w.c.node.node_expand_volume(_nexpand(UNKNOWN_ID, "")), EXPAND),
    Row("NodeExpandVolume", "unknown id at a relative path", NF,
        lambda w: w.c.node.node_expand_volume(_nexpand(UNKNOWN_ID, RELATIVE)), EXPAND),
    Row("NodeExpandVolume", "another volume's target", FP,
        lambda w: w.c.node.node_expand_volume(_nexpand(w.second.volume_id, str(w.staged.target))), EXPAND),
]


# ---- a busy volume, name and snapshot ----------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    volume_id: str
    name_id: str
    snapshot_id: str


def _busy_rows() -> list[Row]:
    def held(name: str) -> str:
        return volume_id_for(name)

    return [
        Row("CreateVolume", "same name in flight", AB,
            lambda w: w.c.controller.create_volume(_clone("pvc-held", UNKNOWN_ID))),
        Row("CreateVolume", "source volume busy", AB,
            lambda w: w.c.controller.create_volume(_clone("pvc-clone-busy", w.busy.volume_id)), CLONE),
        Row("DeleteVolume", "volume busy", AB,
            lambda w: w.c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=held("pvc-held")))),
        Row("ControllerPublishVolume", "volume busy", AB,
            lambda w: w.c.controller.controller_publish_volume(_cpub(w.busy.volume_id, cap=CAP))),
        Row("ControllerUnpublishVolume", "volume busy", AB,
            lambda w: w.c.controller.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
                volume_id=w.busy.volume_id, node_id=NODE_ID))),
        Row("ControllerExpandVolume", "volume busy", AB,
            lambda w: w.c.controller.controller_expand_volume(_expand(w.busy.volume_id)), EXPAND),
        Row("CreateSnapshot", "source volume busy", AB,
            lambda w: w.c.controller.create_snapshot(_snap("snap-of-busy", w.busy.volume_id)), SNAP),
        Row("CreateSnapshot", "same name in flight", AB,
            lambda w: w.c.controller.create_snapshot(_snap("snap-held", UNKNOWN_ID)), SNAP),
        Row("DeleteSnapshot", "snapshot busy", AB,
            lambda w: w.c.controller.delete_snapshot(csi.DeleteSnapshotRequest(
                snapshot_id=snapshot_id_for("snap-held"))), SNAP),
        Row("NodeStageVolume", "volume busy", AB,
            lambda w: w.c.node.node_stage_volume(_stage(w.busy.volume_id, w.fresh("busy-stage"), CAP))),
        Row("NodeUnstageVolume", "volume busy", AB,
            lambda w: w.c.node.node_unstage_volume(_unstage(w.busy.volume_id, w.fresh("busy-unstage")))),
        Row("NodePublishVolume", "volume busy", AB,
            lambda w: w.c.node.node_publish_volume(_npub(w.busy.volume_id, w.fresh("busy-s"), w.fresh("busy-t"), CAP))),
        Row("NodeUnpublishVolume", "volume busy", AB,
            lambda w: w.c.node.node_unpublish_volume(_unpub(w.busy.volume_id, w.fresh("busy-unpublish")))),
        Row("NodeExpandVolume", "volume busy", AB,
            lambda w: w.c.node.node_expand_volume(_nexpand(w.busy.volume_id, RELATIVE)), EXPAND),
    ]


BUSY_ROWS = _busy_rows()


async def _until_aborted(call: Callable[[], Awaitable[object]], what: str, timeout: float = 30.0) -> None:
    """Repeat ``call`` (harmless while nothing holds the lock) until it answers ABORTED."""
    with anyio.fail_after(timeout):
        while True:
            try:
                await call()
            except GRPCError as exc:
                if exc.status is Status.ABORTED:
                    return
            await anyio.sleep(0.05)
    raise AssertionError(f"{what} never became busy")  # pragma: no cover - fail_after raises first


async def _retried(call: Callable[[], Awaitable[object]]) -> None:
    """``call`` as a CO makes it: again after ABORTED (a probe may hold the lock for an instant)."""
    while True:
        try:
            await call()
            return
        except GRPCError as exc:
            if exc.status is not Status.ABORTED:
                raise
        await anyio.sleep(0.05)


def _fsfreeze(flag: str, directory: str) -> None:
    subprocess.run(["fsfreeze", flag, directory], check=flag == "-f", capture_output=True, timeout=60)


@contextlib.asynccontextmanager
async def hold_busy(world: World, storage: Path, *, name: str, snapshot: str) -> AsyncIterator[Held]:
    """Freeze the filesystem the driver keeps its records on, then start three mutations that must write there:
    ControllerUnpublishVolume of ``world.busy``, CreateVolume ``name``, CreateSnapshot ``snapshot``. Each blocks
    holding its lock until the body is done and the filesystem is thawed; then all three finish."""
    c, frozen = world.c, str(storage)
    snapshots = CRpc.CREATE_DELETE_SNAPSHOT in world.caps
    await anyio.to_thread.run_sync(_fsfreeze, "-f", frozen)
    try:
        async with anyio.create_task_group() as tg:
            try:
                tg.start_soon(_retried, lambda: c.controller.controller_unpublish_volume(
                    csi.ControllerUnpublishVolumeRequest(volume_id=world.busy.volume_id, node_id=NODE_ID)))
                tg.start_soon(_retried, lambda: c.controller.create_volume(create_request(name)))
                if snapshots:
                    source = world.plain.volume_id
                    tg.start_soon(_retried, lambda: c.controller.create_snapshot(_snap(snapshot, source)))
                await _until_aborted(lambda: c.node.node_unpublish_volume(_unpub(world.busy.volume_id,
                                                                                 world.fresh("probe"))), "the volume")
                await _until_aborted(lambda: c.controller.create_volume(_clone(name, UNKNOWN_ID)), "the name")
                if snapshots:
                    await _until_aborted(lambda: c.controller.create_snapshot(_snap(snapshot, UNKNOWN_ID)),
                                         "the snapshot name")
                yield Held(world.busy.volume_id, volume_id_for(name), snapshot_id_for(snapshot))
            finally:
                await anyio.to_thread.run_sync(_fsfreeze, "-u", frozen)
    finally:
        await anyio.to_thread.run_sync(_fsfreeze, "-u", frozen)
    if snapshots:
        await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snapshot_id_for(snapshot)))
    await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id_for(name)))


# ---- the drivers' surroundings ------------------------------------------------------------------------------


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


@contextlib.contextmanager
def freezable(directory: Path, size: int = 768 * MIB) -> Iterator[Path]:
    """An ext4 filesystem of the test's own mounted at ``directory`` (so the test may freeze it)."""
    image = directory.with_name(directory.name + ".fs")
    with image.open("wb") as handle:
        handle.truncate(size)
    _sh("mkfs.ext4", "-q", "-F", str(image))
    directory.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-o", "loop", str(image), str(directory))
    try:
        yield directory
    finally:
        subprocess.run(["fsfreeze", "-u", str(directory)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
        image.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def world_of(proc: DriverProcess) -> AsyncIterator[World]:
    """The rows' world on a started driver, torn down through the driver afterwards."""
    async with connect(proc.socket_path) as c:
        world = await World.build(c, proc)
        try:
            yield world
        finally:
            with anyio.CancelScope(shield=True):
                await world.tear_down()


async def run_table(proc: DriverProcess, *, at_least: int) -> list[str]:
    """Every row of :data:`ROWS` that applies (at least ``at_least`` of them) on a started driver; one line for
    each that answered another code. No row may change what is mounted or a published volume's data."""
    async with world_of(proc) as world:
        before = world.mounts()
        assert sum(row.applies(world)[0] for row in ROWS) >= at_least
        wrong = await check_rows(world, ROWS)
        assert world.mounts() == before, "an error row changed what is mounted"
        assert world.staged.read(5) == b"alive", "an error row touched a published volume's data"
    return wrong


async def run_busy(proc: DriverProcess, storage: Path, *, at_least: int) -> list[str]:
    """Every row of :data:`BUSY_ROWS` (at least ``at_least``) while :func:`hold_busy` holds calls in flight on
    ``storage``, the filesystem the driver records its state on."""
    async with world_of(proc) as world:
        started = time.monotonic()
        async with hold_busy(world, storage, name="pvc-held", snapshot="snap-held") as held:
            assert sum(row.applies(world)[0] for row in BUSY_ROWS) >= at_least
            wrong = await check_rows(world, BUSY_ROWS)
            assert (held.volume_id, held.name_id) == (world.busy.volume_id, volume_id_for("pvc-held"))
        assert time.monotonic() - started < 120, "the held calls did not finish after the thaw"
    return wrong
