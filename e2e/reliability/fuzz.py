"""Phase 1: fuzz every RPC over a real gRPC connection, and the transport with malformed protobuf.

Hypothesis draws each request field from adversarial pools (path traversal,
planted symlinks, NUL and control characters, 4,096-character names, negative
and overflowing sizes, unknown enum values, empty/duplicate capabilities,
escalating mount flags, wrong-typed parameters) mixed with plain random values
and with the ids and paths of two real volumes, so deep code paths run too.
Every request that has a ``secrets`` field carries a sentinel secret.

Checks: every answer is a documented code (never UNKNOWN, INTERNAL, UNAVAILABLE
or a broken stream); the driver stays up; the sentinel is in no reply and no
log line; nothing outside the driver's data dir and the kubelet dir is created,
changed, mounted or attached (a decoy directory reached through planted
symlinks, the kubelet dir's siblings, the system paths the fuzzer names and new
entries carrying its token are snapshotted; of mountinfo and the loop devices,
only what this phase's driver could have made is compared, since other
processes on the machine mount and attach too).
"""

from __future__ import annotations

import dataclasses
import os
import random
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import betterproto2
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backends.ids import snapshot_id_for, volume_id_for
from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.reliability.common import (
    DOCUMENTED,
    MIB,
    NODE_ID,
    THIN,
    PhaseResult,
    ScratchNode,
    block_cap,
    listing,
    log_lines,
    mount_cap,
    scratch_node,
    tree_state,
)
from e2e.sim.driver import CALL_TIMEOUT, REPO

SENTINEL = "S3NTINEL-d0-not-log-7f3a9c"
TOKEN = "lcfz"  # in every path the fuzzer invents outside the kubelet dir, to spot escapes
Mode = csi.VolumeCapabilityAccessModeMode

#: (service, method, request type) for every RPC of CSI v1.12.
RPCS: tuple[tuple[str, str, type[betterproto2.Message]], ...] = (
    ("Identity", "GetPluginInfo", csi.GetPluginInfoRequest),
    ("Identity", "GetPluginCapabilities", csi.GetPluginCapabilitiesRequest),
    ("Identity", "Probe", csi.ProbeRequest),
    ("Controller", "CreateVolume", csi.CreateVolumeRequest),
    ("Controller", "DeleteVolume", csi.DeleteVolumeRequest),
    ("Controller", "ControllerPublishVolume", csi.ControllerPublishVolumeRequest),
    ("Controller", "ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest),
    ("Controller", "ValidateVolumeCapabilities", csi.ValidateVolumeCapabilitiesRequest),
    ("Controller", "ListVolumes", csi.ListVolumesRequest),
    ("Controller", "GetCapacity", csi.GetCapacityRequest),
    ("Controller", "ControllerGetCapabilities", csi.ControllerGetCapabilitiesRequest),
    ("Controller", "CreateSnapshot", csi.CreateSnapshotRequest),
    ("Controller", "DeleteSnapshot", csi.DeleteSnapshotRequest),
    ("Controller", "ListSnapshots", csi.ListSnapshotsRequest),
    ("Controller", "GetSnapshot", csi.GetSnapshotRequest),
    ("Controller", "ControllerExpandVolume", csi.ControllerExpandVolumeRequest),
    ("Controller", "ControllerGetVolume", csi.ControllerGetVolumeRequest),
    ("Controller", "ControllerModifyVolume", csi.ControllerModifyVolumeRequest),
    ("Node", "NodeStageVolume", csi.NodeStageVolumeRequest),
    ("Node", "NodeUnstageVolume", csi.NodeUnstageVolumeRequest),
    ("Node", "NodePublishVolume", csi.NodePublishVolumeRequest),
    ("Node", "NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest),
    ("Node", "NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest),
    ("Node", "NodeExpandVolume", csi.NodeExpandVolumeRequest),
    ("Node", "NodeGetCapabilities", csi.NodeGetCapabilitiesRequest),
    ("Node", "NodeGetInfo", csi.NodeGetInfoRequest),
)

NASTY_TEXT = [
    "", " ", ".", "..", "../", "../../../../etc/passwd", "/etc/passwd", "/", "\x00", "a\x00b", "\n", "\t\r",
    "\x7f", "\u202e", "\ud7ff", "💥", "x" * 129, "x" * 4096, "é" * 2048, "%s%n", "$(reboot)", "`id`", "'; --",
    "a,b=c", "=", ",", "pvc-ok", "lcv-" + "0" * 32, "lcs-" + "f" * 32, "lcv-../../x", "LCV-" + "A" * 32,
]
MOUNT_FLAGS = [
    "bind", "rbind", "remount", "move", "shared", "rshared", "make-shared", "suid", "dev", "exec", "rw", "ro",
    "nosuid,bind", "ro,remount", "rw,suid,dev", "uid=0", "gid=0", "errors=remount-ro", "loop", "user",
    "context=system_u:object_r:container_file_t:s0", "context=\"a,b\"", "x-systemd.automount", "comment=x",
    "defaults", "noexec", "a=b=c", ",,,", "=", "data=journal", "x" * 4096, "\x00", "nosuid\nbind",
]


def _paths(kubelet: Path, outside: Path, real: list[str]) -> list[str]:
    k = str(kubelet)
    return [
        "", "relative/path", f"{TOKEN}/relative", "/", "/etc", "/etc/passwd", "/dev/null", "/proc/self/root",
        f"/tmp/{TOKEN}-abs", str(outside), str(outside / "file"), f"{outside}/{TOKEN}-new",
        f"{k}/../{outside.name}", f"{k}/pods/../../{outside.name}/{TOKEN}", f"{k}/./pods/x", f"{k}//pods//x",
        f"{k}/evil", f"{k}/evil/{TOKEN}", f"{k}/etc-link/{TOKEN}", f"{k}/pods/p1/volumes/evil-target",
        f"{k}/pods/p1/volumes/x\x00y", f"{k}/pods/p1/\n/mount", f"{k}/" + "d" * 4096, f"{k}/" + "/".join(["d"] * 2100),
        f"{k}/pods/{TOKEN}/mount", f"{k}/plugins/{TOKEN}/globalmount", f"{k}/plugins/x/globalmount/",
        *real,
    ]


def _id_pool(real: list[str]) -> st.SearchStrategy[str]:
    fixed = [volume_id_for("never-made"), snapshot_id_for("never-made"), *real]
    return st.one_of(st.sampled_from(fixed), st.sampled_from(NASTY_TEXT), st.text(max_size=40))


def _int64() -> st.SearchStrategy[int]:
    edges = [0, -1, 1, MIB, 64 * MIB, 300 * MIB, 1 << 40, (1 << 63) - 1, -(1 << 63), (1 << 62) + 7]
    return st.one_of(st.sampled_from(edges), st.integers(-(1 << 63), (1 << 63) - 1))


def _maps() -> st.SearchStrategy[dict[str, str]]:
    keys = st.one_of(st.sampled_from(["loopfile.localcsi.dev/provisioning", "csi.storage.k8s.io/fstype",
                                      "csi.storage.k8s.io/pvc/name", "size", "fsType", "thin", "1", *NASTY_TEXT]),
                     st.text(max_size=20))
    values = st.one_of(st.sampled_from(["thin", "thick", "true", "1", "-5", "[1, 2]", "{\"a\": 1}", "null",
                                        "3.5e300", *NASTY_TEXT]), st.text(max_size=20))
    return st.dictionaries(keys, values, max_size=4)


def _capability() -> st.SearchStrategy[csi.VolumeCapability]:
    modes = st.one_of(st.sampled_from(list(Mode)), st.integers(-3, 40))
    access = st.one_of(st.none(), st.builds(csi.VolumeCapabilityAccessMode, mode=modes))
    mount = st.builds(csi.VolumeCapabilityMountVolume,
                      fs_type=st.sampled_from(["", "ext4", "xfs", "btrfs", "ext4,bind", "../ext4", "vfat", "x" * 300]),
                      mount_flags=st.lists(st.one_of(st.sampled_from(MOUNT_FLAGS), st.text(max_size=12)), max_size=4),
                      volume_mount_group=st.sampled_from(["", "0", "-1", "root", "x" * 4096]))
    kind = st.sampled_from(["mount", "block", "both", "neither"])

    def build(k: str, m: csi.VolumeCapabilityMountVolume, a: Any) -> csi.VolumeCapability:
        if k == "mount":
            return csi.VolumeCapability(mount=m, access_mode=a)
        if k == "block":
            return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=a)
        if k == "both":  # both oneof members on the wire: concatenate two encodings
            return csi.VolumeCapability.FromString(
                bytes(csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=a))
                + bytes(csi.VolumeCapability(mount=m)))
        return csi.VolumeCapability(access_mode=a)

    return st.builds(build, kind, mount, access)


def _caps() -> st.SearchStrategy[list[csi.VolumeCapability]]:
    return st.one_of(st.just([]), st.lists(_capability(), max_size=3),
                     _capability().map(lambda c: [c, c]))  # duplicates


def _topology(node: st.SearchStrategy[str]) -> st.SearchStrategy[csi.Topology]:
    return st.builds(csi.Topology, segments=st.one_of(
        _maps(), node.map(lambda n: {"topology.localcsi.dev/node": n})))


def strategies(kubelet: Path, outside: Path, real_ids: list[str], real_paths: list[str]
               ) -> dict[str, st.SearchStrategy[Any]]:
    """Field name → strategy; every request type is built from these by field name."""
    paths = st.one_of(st.sampled_from(_paths(kubelet, outside, real_paths)), st.text(max_size=30))
    ids = _id_pool(real_ids)
    node = st.one_of(st.just(NODE_ID), st.sampled_from(NASTY_TEXT), st.text(max_size=10))
    names = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=140), st.just("pvc-fuzz-ok"))
    source = st.one_of(st.none(), ids.map(lambda i: csi.VolumeContentSource(
        snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=i))), ids.map(lambda i: csi.VolumeContentSource(
            volume=csi.VolumeContentSourceVolumeSource(volume_id=i))), st.just(csi.VolumeContentSource()))
    secrets = st.dictionaries(st.sampled_from(["password", "token", SENTINEL]), st.just(SENTINEL), min_size=1)
    secrets = secrets.map(lambda d: {**d, "password": SENTINEL})
    return {
        "name": names, "volume_id": ids, "snapshot_id": ids, "source_volume_id": ids, "node_id": node,
        "staging_target_path": paths, "target_path": paths, "volume_path": paths,
        "capacity_range": st.one_of(st.none(), st.builds(csi.CapacityRange, required_bytes=_int64(),
                                                         limit_bytes=_int64())),
        "volume_capabilities": _caps(), "volume_capability": st.one_of(st.none(), _capability()),
        "parameters": _maps(), "mutable_parameters": _maps(), "volume_context": _maps(),
        "publish_context": st.one_of(_maps(), node.map(lambda n: {"localcsi.dev/node": n})),
        "secrets": secrets, "readonly": st.booleans(),
        "max_entries": st.one_of(st.sampled_from([0, -1, 1, (1 << 31) - 1, -(1 << 31)]),
                                 st.integers(-(1 << 31), (1 << 31) - 1)),
        "starting_token": st.one_of(st.just(""), ids),
        "volume_content_source": source,
        "accessibility_requirements": st.one_of(st.none(), st.builds(
            csi.TopologyRequirement, requisite=st.lists(_topology(node), max_size=2),
            preferred=st.lists(_topology(node), max_size=2))),
        "accessible_topology": st.one_of(st.none(), _topology(node)),
    }


def request_strategy(kind: type[betterproto2.Message], pool: dict[str, st.SearchStrategy[Any]]
                     ) -> st.SearchStrategy[betterproto2.Message]:
    fields = {f.name: pool[f.name] for f in dataclasses.fields(kind) if f.name in pool}  # type: ignore[arg-type]
    return st.fixed_dictionaries(fields).map(lambda kw: kind(**kw))


class RawCodec(CodecBase):
    """Sends bytes as they are, so malformed protobuf reaches the server's decoder."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


@dataclasses.dataclass
class Outcomes:
    tried: Counter[str] = dataclasses.field(default_factory=Counter)
    codes: Counter[str] = dataclasses.field(default_factory=Counter)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    leaked_secret: list[str] = dataclasses.field(default_factory=list)

    def record(self, rpc: str, status: Status | None, message: str, detail: str) -> None:
        self.tried[rpc] += 1
        name = status.name if status is not None else "BROKEN_STREAM"
        self.codes[f"{rpc}:{name}"] += 1
        if status not in DOCUMENTED:
            self.unexpected.append(f"{rpc} -> {name}: {message[:200]} (request {detail[:300]})")
        if SENTINEL in message:
            self.leaked_secret.append(f"{rpc} error message carries the secret")


async def call_typed(channel: Channel, service: str, method: str, request: betterproto2.Message
                     ) -> tuple[Status | None, str]:
    stub = {"Identity": csi.IdentityStub, "Controller": csi.ControllerStub, "Node": csi.NodeStub}[service](channel)
    fn = getattr(stub, _snake(method))
    try:
        reply = await fn(request, timeout=CALL_TIMEOUT)
    except GRPCError as exc:
        return exc.status, exc.message or ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return Status.OK, str(reply.to_dict()) if SENTINEL in str(reply.to_dict()) else ""


async def call_raw(channel: Channel, path: str, payload: bytes) -> tuple[Status | None, str]:
    try:
        async with channel.request(path, Cardinality.UNARY_UNARY, bytes, bytes, timeout=CALL_TIMEOUT) as stream:
            await stream.send_message(payload, end=True)
            await stream.recv_message()
            await stream.recv_trailing_metadata()
    except GRPCError as exc:
        return exc.status, exc.message or ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return Status.OK, ""


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Malformed encodings: random bytes, truncations and bit flips of a valid one, bad varints, wrong wire types."""
    def flip(data: bytes, index: int, bit: int) -> bytes:
        if not data:
            return b"\x80"
        i = index % len(data)
        return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]

    crafted = [b"\x08" + b"\xff" * 11, b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x02\xc3\x28", b"\x0b\x0c", b"\x0f",
               b"\x0a\x05ab", b"\x1a" + b"\x0a" * 40, b"\x12\x7f", b"\x22\x80\x80\x80\x80\x10", b"\x00\x00"]
    return st.one_of(
        st.binary(max_size=64), st.sampled_from(crafted),
        st.integers(0, max(0, len(valid) - 1)).map(lambda n: valid[:n]),
        st.builds(flip, st.just(valid), st.integers(0, 1 << 16), st.integers(0, 7)),
    )


SETTINGS = settings(deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))


def fuzz_typed(portal_call: Callable[[str, str, betterproto2.Message], tuple[Status | None, str]],
               pool: dict[str, st.SearchStrategy[Any]], outcomes: Outcomes, examples: int) -> None:
    """Runs in a worker thread: hypothesis drives, the calls go to the event loop."""
    def case(service: str, method: str, kind: type[betterproto2.Message]) -> Callable[[], None]:
        @settings(SETTINGS, max_examples=examples)
        @given(request_strategy(kind, pool))
        def one(request: betterproto2.Message) -> None:
            status, message = portal_call(service, method, request)
            outcomes.record(method, status, message, repr(request))

        return one

    for service, method, kind in RPCS:
        case(service, method, kind)()


def fuzz_raw(portal_call: Callable[[str, bytes], tuple[Status | None, str]], outcomes: Outcomes,
             examples: int) -> None:
    def case(path: str, method: str, valid: bytes) -> Callable[[], None]:
        @settings(SETTINGS, max_examples=examples)
        @given(_mutations(valid))
        def one(payload: bytes) -> None:
            status, message = portal_call(path, payload)
            outcomes.record(f"raw:{method}", status, message, payload.hex())

        return one

    for service, method, kind in RPCS:
        case(f"/csi.v1.{service}/{method}", method, bytes(kind(**_valid_fields(kind))))()


def _valid_fields(kind: type[betterproto2.Message]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    values: dict[str, Any] = {"name": "pvc-raw", "volume_id": volume_id_for("pvc-raw"),
                              "capacity_range": csi.CapacityRange(required_bytes=64 * MIB),
                              "staging_target_path": "/var/lib/kubelet/x", "target_path": "/var/lib/kubelet/y",
                              "secrets": {"password": "raw-not-the-sentinel"}}
    return {k: v for k, v in values.items() if k in names}


def _plant(node: ScratchNode) -> Path:
    """A decoy outside the kubelet dir, reachable through symlinks planted inside it."""
    outside = node.root / f"outside-{TOKEN}"
    outside.mkdir()
    (outside / "file").write_text("decoy\n")
    (outside / "dir").mkdir()
    kubelet = node.kubelet_dir
    (kubelet / "evil").symlink_to(outside)
    (kubelet / "etc-link").symlink_to("/etc")
    (kubelet / "pods" / "p1" / "volumes").mkdir(parents=True)
    (kubelet / "pods" / "p1" / "volumes" / "evil-target").symlink_to(outside / "dir")
    return outside


#: Paths outside the scratch tree the fuzzer names in requests (see :func:`_paths`): they must stay as they are.
NAMED_PATHS = ("/", "/etc", "/etc/passwd", "/dev/null", "/proc/self/root")
#: Directories where a path the fuzzer invents would land (relative paths resolve in the driver's directory).
TOKEN_DIRS = ("/", "/etc", "/tmp", "/dev", str(REPO))


@dataclasses.dataclass(frozen=True)
class WorldSnapshot:
    """What of the machine this phase could change, and only that: other processes on a CI machine write
    ``/etc``, mount filesystems and attach loop devices at any time, and none of that may count."""

    decoy: dict[str, tuple[int, int, int, str]]
    root_names: set[str]
    #: (mode, inode, size, mtime of a regular file) of each of :data:`NAMED_PATHS`.
    named: dict[str, tuple[int, int, int, int]]
    #: Entries whose name holds the fuzzer's token, in :data:`TOKEN_DIRS`.
    tokened: set[str]
    mounts: Counter[leaks.Mount]
    loops: set[str]


def _named(path: str) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    regular = stat.S_ISREG(st.st_mode)  # a directory's mtime moves whenever anyone adds an entry to it
    return st.st_mode, st.st_ino, st.st_size if regular else 0, st.st_mtime_ns if regular else 0


def _ours(mount: leaks.Mount, node: ScratchNode, loop_numbers: set[str]) -> bool:
    """A mount this phase's driver could have made: of one of its loop devices, of something under the scratch
    tree or the fuzzer's token, or at a path the fuzzer named."""
    scratch = str(node.root)
    return (mount.device in loop_numbers or mount.point in NAMED_PATHS
            or any(TOKEN in p or p.startswith(scratch) or node.root.name in p for p in (mount.point, mount.root)))


def _our_backing(backing: str, node: ScratchNode) -> bool:
    """A loop device this phase's driver could have attached: over a file under the scratch tree (its images
    are there), one with the fuzzer's token, or one the fuzzer named."""
    return backing.startswith(str(node.root) + "/") or TOKEN in backing or backing in NAMED_PATHS


def snapshot_world(node: ScratchNode, outside: Path) -> WorldSnapshot:
    loops = [info for info in leaks.loop_devices() if _our_backing(info.backing_file, node)]
    numbers = {info.number for info in loops}
    tokened = {f"{d.rstrip('/')}/{n}" for d in TOKEN_DIRS for n in listing(Path(d)) if TOKEN in n}
    return WorldSnapshot(tree_state(outside), listing(node.root), {p: _named(p) for p in NAMED_PATHS}, tokened,
                         Counter(m for m in leaks.mount_table() if _ours(m, node, numbers)),
                         {info.backing_file for info in loops})


def compare_world(before: WorldSnapshot, after: WorldSnapshot, node: ScratchNode, result: PhaseResult) -> None:
    changed = sorted(set(after.decoy) ^ set(before.decoy))
    result.check(before.decoy == after.decoy, f"decoy directory changed: {changed}")
    result.check(before.root_names == after.root_names,
                 f"entries appeared next to the kubelet dir: {sorted(after.root_names ^ before.root_names)}")
    named = sorted(p for p in NAMED_PATHS if before.named[p] != after.named[p])
    result.check(not named, f"paths the fuzzer named changed: {named}")
    result.check(not after.tokened - before.tokened, f"entries appeared: {sorted(after.tokened - before.tokened)}")
    allowed = (str(node.kubelet_dir) + "/", str(node.root / "storage"))
    new_mounts = [m.point for m in after.mounts - before.mounts if not m.point.startswith(allowed)]
    result.check(not new_mounts, f"mounts appeared outside the kubelet dir: {new_mounts}")
    stray = [b for b in after.loops - before.loops if not b.startswith(str(node.data_dir) + "/")]
    result.check(not stray, f"loop devices attached to files outside the data dir: {stray}")


async def _seed_volumes(node: ScratchNode) -> tuple[list[str], list[str]]:
    """Two real volumes (filesystem staged + published, block staged) so requests can reach deep paths."""
    stubs = node.driver.client()
    k = node.kubelet_dir
    fs = await stubs.controller.create_volume(csi.CreateVolumeRequest(
        name="fuzz-fs", capacity_range=csi.CapacityRange(required_bytes=32 * MIB), volume_capabilities=[mount_cap()],
        parameters=THIN))
    blk = await stubs.controller.create_volume(csi.CreateVolumeRequest(
        name="fuzz-block", capacity_range=csi.CapacityRange(required_bytes=8 * MIB), volume_capabilities=[block_cap()],
        parameters=THIN))
    assert fs.volume is not None and blk.volume is not None
    staging, target = k / "plugins" / "fs" / "globalmount", k / "pods" / "seed" / "volumes" / "fs" / "mount"
    staging.mkdir(parents=True)
    target.parent.mkdir(parents=True)
    await stubs.node.node_stage_volume(csi.NodeStageVolumeRequest(
        volume_id=fs.volume.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()))
    await stubs.node.node_publish_volume(csi.NodePublishVolumeRequest(
        volume_id=fs.volume.volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=mount_cap()))
    bstage = k / "plugins" / "block" / "staging"
    bstage.mkdir(parents=True)
    await stubs.node.node_stage_volume(csi.NodeStageVolumeRequest(
        volume_id=blk.volume.volume_id, staging_target_path=str(bstage), volume_capability=block_cap()))
    return [fs.volume.volume_id, blk.volume.volume_id], [str(staging), str(target), str(bstage)]


async def run(examples: int, raw_examples: int, seed: int) -> PhaseResult:
    result = PhaseResult("fuzz")
    random.seed(seed)
    async with scratch_node("fuzz", 768 * MIB) as node:
        outside = await anyio.to_thread.run_sync(_plant, node)
        real_ids, real_paths = await _seed_volumes(node)
        pool = strategies(node.kubelet_dir, outside, real_ids, real_paths)
        before = await anyio.to_thread.run_sync(snapshot_world, node, outside)
        outcomes = Outcomes()
        restarts = 0
        raw_channel = Channel(path=str(node.driver.socket_path), codec=RawCodec())

        async def typed(service: str, method: str, request: betterproto2.Message) -> tuple[Status | None, str]:
            nonlocal restarts
            status, message = await call_typed(node.driver.client().channel, service, method, request)
            if not node.driver.alive:
                restarts += 1
                result.fail(f"driver died on {method}: {node.driver.log_tail(1500)}")
                await node.driver.start()
            return status, message

        async def raw(path: str, payload: bytes) -> tuple[Status | None, str]:
            return await call_raw(raw_channel, path, payload)

        def run_typed(service: str, method: str, request: betterproto2.Message) -> tuple[Status | None, str]:
            return anyio.from_thread.run(typed, service, method, request)

        def run_raw(path: str, payload: bytes) -> tuple[Status | None, str]:
            return anyio.from_thread.run(raw, path, payload)

        await anyio.to_thread.run_sync(fuzz_typed, run_typed, pool, outcomes, examples)
        await anyio.to_thread.run_sync(fuzz_raw, run_raw, outcomes, raw_examples)
        raw_channel.close()
        after = await anyio.to_thread.run_sync(snapshot_world, node, outside)
        compare_world(before, after, node, result)
        result.check(node.driver.alive, "driver is not running after the fuzzing")
        leaked = [line[:200] for line in await anyio.to_thread.run_sync(log_lines, node) if SENTINEL in line]
        result.check(not leaked, f"the sentinel secret appears in {len(leaked)} log lines, e.g. {leaked[:2]}")
        for message in outcomes.unexpected[:20]:
            result.fail(f"unexpected code: {message}")
        if len(outcomes.unexpected) > 20:
            result.fail(f"... and {len(outcomes.unexpected) - 20} more unexpected codes")
        for message in outcomes.leaked_secret[:5]:
            result.fail(message)
        result.figures.update({
            "inputs": sum(outcomes.tried.values()),
            "inputs_per_rpc": dict(sorted(outcomes.tried.items())),
            "codes": dict(sorted(outcomes.codes.items())),
            "unexpected_codes": len(outcomes.unexpected),
            "driver_restarts": restarts,
            "log_lines_checked_for_secret": len(await anyio.to_thread.run_sync(log_lines, node)),
        })
    return result
