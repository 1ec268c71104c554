"""Phase 5: least exposure.

* The socket is created 0660 (never world-accessible).
* A sentinel secret rides in every RPC that has a ``secrets`` field, on a whole successful lifecycle and on
  error paths; no log line (DEBUG included) and no reply or error message may contain it.
* ``--mode controller`` runs as ``nobody`` (setpriv) under strace: it must start, answer the controller calls
  with documented codes, open no device under /dev (/dev/null, the random devices and POSIX shared memory in
  /dev/shm are not devices), and make no mount or umount call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e.reliability.common import DOCUMENTED, MIB, THIN, PhaseResult, ScratchNode, log_lines, mount_cap, scratch_node
from e2e.reliability.fuzz import RPCS
from e2e.sim import host
from e2e.sim.driver import REPO

SENTINEL = "exposure-S3CRET-4b1d"
SECRETS = {"password": SENTINEL, "token": SENTINEL}
NOBODY = 65534
HARMLESS_DEVICES = ("/dev/null", "/dev/urandom", "/dev/random")


def secret_rpcs() -> set[str]:
    return {m for _, m, kind in RPCS if "secrets" in {f.name for f in dataclasses.fields(kind)}}  # type: ignore[arg-type]


def _cap() -> csi.VolumeCapability:  # xfs: ext4 online growth needs CAP_SYS_RESOURCE, which the host lacks
    return mount_cap("xfs")


class SecretCalls:
    """Issues calls, records which secret-bearing RPCs were exercised and any reply that leaks."""

    def __init__(self, channel: Channel, result: PhaseResult) -> None:
        self.controller, self.node = csi.ControllerStub(channel), csi.NodeStub(channel)
        self.result = result
        self.covered: set[str] = set()
        self.codes: dict[str, list[str]] = {}

    async def call(self, rpc: str, send: Callable[[], Awaitable[Any]]) -> Any:
        self.covered.add(rpc)
        try:
            reply = await send()
        except GRPCError as exc:
            self.codes.setdefault(rpc, []).append(exc.status.name)
            self.result.check(SENTINEL not in (exc.message or ""), f"{rpc} error message carries the secret")
            self.result.check(exc.status in DOCUMENTED, f"{rpc} answered {exc.status.name}: {exc.message}")
            return None
        self.codes.setdefault(rpc, []).append("OK")
        self.result.check(SENTINEL not in str(reply.to_dict()), f"{rpc} reply carries the secret")
        return reply


async def lifecycle_with_secrets(node: ScratchNode, result: PhaseResult) -> SecretCalls:
    calls = SecretCalls(node.driver.client().channel, result)
    c, n = calls.controller, calls.node
    k = node.kubelet_dir
    staging, target = k / "plugins" / "v" / "globalmount", k / "pods" / "p" / "volumes" / "v" / "mount"
    await anyio.Path(staging).mkdir(parents=True)
    await anyio.Path(target.parent).mkdir(parents=True)
    created = await calls.call("CreateVolume", lambda: c.create_volume(csi.CreateVolumeRequest(
        name="secret-vol", capacity_range=csi.CapacityRange(required_bytes=320 * MIB), volume_capabilities=[_cap()],
        parameters=THIN, secrets=SECRETS)))
    vid = created.volume.volume_id
    ghost = "lcv-" + "0" * 32
    steps: list[tuple[str, Callable[[str], Awaitable[Any]]]] = [
        ("ValidateVolumeCapabilities", lambda v: c.validate_volume_capabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=v, volume_capabilities=[_cap()], secrets=SECRETS))),
        ("ControllerPublishVolume", lambda v: c.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=v, node_id="rel-node", volume_capability=_cap(), secrets=SECRETS))),
        ("NodeStageVolume", lambda v: n.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=v, staging_target_path=str(staging), volume_capability=_cap(), secrets=SECRETS))),
        ("NodePublishVolume", lambda v: n.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=v, staging_target_path=str(staging), target_path=str(target), volume_capability=_cap(),
            secrets=SECRETS))),
        ("ControllerExpandVolume", lambda v: c.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=v, capacity_range=csi.CapacityRange(required_bytes=352 * MIB), secrets=SECRETS))),
        ("NodeExpandVolume", lambda v: n.node_expand_volume(csi.NodeExpandVolumeRequest(
            volume_id=v, volume_path=str(target), capacity_range=csi.CapacityRange(required_bytes=352 * MIB),
            secrets=SECRETS))),
        ("ControllerModifyVolume", lambda v: c.controller_modify_volume(csi.ControllerModifyVolumeRequest(
            volume_id=v, mutable_parameters={"a": "b"}, secrets=SECRETS))),
        ("CreateSnapshot", lambda v: c.create_snapshot(csi.CreateSnapshotRequest(
            source_volume_id=v, name="secret-snap", secrets=SECRETS))),
        ("ListSnapshots", lambda v: c.list_snapshots(csi.ListSnapshotsRequest(secrets=SECRETS))),
    ]
    for volume_id in (vid, ghost):  # the successful path, then the error path of each call
        for rpc, send in steps:
            await calls.call(rpc, lambda send=send, volume_id=volume_id: send(volume_id))  # type: ignore[misc]
    snap_id = "lcs-" + "0" * 32
    snaps = await c.list_snapshots(csi.ListSnapshotsRequest(source_volume_id=vid))
    if snaps.entries and snaps.entries[0].snapshot is not None:
        snap_id = snaps.entries[0].snapshot.snapshot_id
    for sid in (snap_id, "lcs-" + "1" * 32):
        await calls.call("GetSnapshot", lambda sid=sid: c.get_snapshot(  # type: ignore[misc]
            csi.GetSnapshotRequest(snapshot_id=sid, secrets=SECRETS)))
        await calls.call("DeleteSnapshot", lambda sid=sid: c.delete_snapshot(  # type: ignore[misc]
            csi.DeleteSnapshotRequest(snapshot_id=sid, secrets=SECRETS)))
    await n.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target)))
    await n.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)))
    for volume_id in (vid, ghost):
        await calls.call("ControllerUnpublishVolume", lambda v=volume_id: c.controller_unpublish_volume(  # type: ignore[misc]
            csi.ControllerUnpublishVolumeRequest(volume_id=v, node_id="rel-node", secrets=SECRETS)))
        await calls.call("DeleteVolume", lambda v=volume_id: c.delete_volume(  # type: ignore[misc]
            csi.DeleteVolumeRequest(volume_id=v, secrets=SECRETS)))
    return calls


async def controller_mode_unprivileged(result: PhaseResult) -> dict[str, object]:
    """``--mode controller`` as nobody under strace: documented answers, no /dev, no mounts."""
    root = Path(tempfile.mkdtemp(prefix="rel-ctl-"))
    os.chmod(root, 0o755)
    sock_dir = root / "sock"
    sock_dir.mkdir()
    os.chown(sock_dir, NOBODY, NOBODY)
    trace, log = root / "strace.out", root / "driver.log"
    argv = ["strace", "-f", "-qq", "-e", "trace=open,openat,mount,umount2,mount_setattr,fsopen,ioctl", "-o", str(trace),
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, "-m", "csi.cli", "serve", "--mode", "controller", "--node-id", "ctl",
            "--endpoint", f"unix://{sock_dir}/csi.sock", "--log-format", "json", "--log-level", "DEBUG"]
    codes: dict[str, str] = {}
    with log.open("wb") as out:
        proc = await anyio.open_process(argv, stdout=out, stderr=out, cwd=REPO, start_new_session=True)
        try:
            with anyio.fail_after(60):
                while not (sock_dir / "csi.sock").exists():
                    result.check(proc.returncode is None, f"controller mode did not start as nobody: {log.read_text()}")
                    if proc.returncode is not None:
                        return {}
                    await anyio.sleep(0.1)
            mode = stat.S_IMODE(os.stat(sock_dir / "csi.sock").st_mode)
            result.check(mode == 0o660, f"controller socket mode is {mode:o}, not 660")
            channel = Channel(path=str(sock_dir / "csi.sock"))
            codes = await _controller_calls(channel, result)
            channel.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with anyio.move_on_after(10):
                await proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    touched = _node_side_work(trace.read_text(errors="replace"))
    result.check(not touched, f"controller mode did node-side work: {touched[:5]}")
    with contextlib.suppress(OSError):
        host.run(["rm", "-rf", str(root)])
    return {"controller_mode_uid": NOBODY, "controller_mode_codes": codes,
            "controller_mode_node_side_calls": len(touched)}


async def _controller_calls(channel: Channel, result: PhaseResult) -> dict[str, str]:
    c, i = csi.ControllerStub(channel), csi.IdentityStub(channel)
    vid = "lcv-" + "2" * 32
    sends: dict[str, Callable[[], Awaitable[Any]]] = {
        "Probe": lambda: i.probe(csi.ProbeRequest()),
        "ControllerGetCapabilities": lambda: c.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest()),
        "CreateVolume": lambda: c.create_volume(csi.CreateVolumeRequest(
            name="x", capacity_range=csi.CapacityRange(required_bytes=MIB), volume_capabilities=[_cap()])),
        "ControllerPublishVolume": lambda: c.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="n1", volume_capability=_cap(), secrets=SECRETS)),
        "ControllerUnpublishVolume": lambda: c.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
            volume_id=vid, node_id="n1")),
        "ControllerExpandVolume": lambda: c.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=2 * MIB))),
        "ListVolumes": lambda: c.list_volumes(csi.ListVolumesRequest()),
        "GetCapacity": lambda: c.get_capacity(csi.GetCapacityRequest()),
        "NodeStageVolume": lambda: csi.NodeStub(channel).node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path="/tmp/x", volume_capability=_cap())),
    }
    codes = {}
    for rpc, send in sends.items():
        try:
            await send()
            codes[rpc] = "OK"
        except GRPCError as exc:
            codes[rpc] = exc.status.name
            result.check(exc.status in DOCUMENTED and exc.status is not Status.INTERNAL,
                         f"controller mode {rpc} answered {exc.status.name}: {exc.message}")
    return codes


def _node_side_work(trace: str) -> list[str]:
    found = []
    for line in trace.splitlines():
        if "ENOENT" in line:
            continue
        mounts = any(f"{call}(" in line for call in ("mount", "umount2", "mount_setattr", "fsopen"))
        device = '"/dev/' in line and '"/dev/shm/' not in line and not any(f'"{d}"' in line for d in HARMLESS_DEVICES)
        if mounts or device:  # attempts count, failed or not
            found.append(line.strip())
    return found


async def run() -> PhaseResult:
    result = PhaseResult("exposure")
    async with scratch_node("exp", 512 * MIB) as node:
        mode = stat.S_IMODE(os.stat(node.driver.socket_path).st_mode)
        result.check(mode == 0o660, f"socket mode is {mode:o}, not 660")
        result.check(not mode & 0o007, "the socket is world-accessible")
        calls = await lifecycle_with_secrets(node, result)
        missing = secret_rpcs() - calls.covered
        result.check(not missing, f"secret-bearing RPCs not exercised: {sorted(missing)}")
        lines = await anyio.to_thread.run_sync(log_lines, node)
        leaked = [line[:160] for line in lines if SENTINEL in line]
        result.check(not leaked, f"the secret appears in {len(leaked)} log lines: {leaked[:2]}")
        result.figures.update({"socket_mode": f"{mode:o}", "secret_rpcs_exercised": len(calls.covered),
                               "secret_rpc_codes": calls.codes, "log_lines_grepped": len(lines)})
    result.figures.update(await controller_mode_unprivileged(result))
    return result
