"""``localcsi ctl``: a CSI client for people, and for scripts (works against any CSI driver).

Every RPC a driver serves has a subcommand. Output is a readable table by default (``-o table``), the
responses as JSON for scripts (``-o json``), or only the id a command made or names (``-o id``), so that
``VOL=$(localcsi ctl -o id create pvc-a --size 1Gi)`` works. A gRPC error prints its code and message and
exits 1; a user mistake (malformed endpoint, unreachable socket, closed pipe) prints one line and exits non-zero,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import betterproto2
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from csi.cli.units import human, parse_size
from csi.config import Endpoint
from csi.gen.csi import v1 as csi

Mode = csi.VolumeCapabilityAccessModeMode
TOPOLOGY_KEY = "topology.localcsi.dev/node"
POOL_PARAMETER = "localcsi.dev/pool"
NAME_CONTEXT = "localcsi.dev/name"
DEFAULT_ENDPOINT = "unix:///run/localcsi/csi.sock"


class UsageError(Exception):
    """A mistake in the command line: one line on stderr, exit 2."""


def parse_pairs(pairs: Sequence[str], what: str = "KEY=VALUE") -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected {what}, got {pair!r}")
        out[key] = value
    return out


def pool_of(object_id: str) -> str:
    """The pool a localcsi id names (``lcv-…@fast``), "-" for ids without one."""
    return object_id.rpartition("@")[2] if "@" in object_id else "-"


# ---- output ---------------------------------------------------------------------------------------------------


@dataclass
class Output:
    """What a command prints: a table for people, the raw responses for scripts, the id it is about."""

    data: Any
    rows: Sequence[Sequence[str]] = field(default_factory=list)
    header: Sequence[str] = ()
    ids: list[str] = field(default_factory=list)
    #: Lines printed before the table (key: value facts).
    facts: list[tuple[str, str]] = field(default_factory=list)

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.data, indent=2, sort_keys=True, default=str)
        if fmt == "id":
            return "\n".join(self.ids)
        lines = []
        width = max((len(k) for k, _ in self.facts), default=0)
        lines += [f"{key + ':':<{width + 1}} {value}" for key, value in self.facts]
        if self.header:
            if lines:
                lines.append("")
            table = [list(self.header), *[list(r) for r in self.rows]]
            widths = [max(len(str(row[i])) for row in table) for i in range(len(self.header))]
            lines += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in table]
            if not self.rows:
                lines.append("(none)")
        return "\n".join(lines)


def as_json(message: betterproto2.Message) -> Any:
    return message.to_dict(casing=betterproto2.Casing.SNAKE)


def _condition(status: Any) -> str:
    cond = getattr(status, "volume_condition", None) if status is not None else None
    if cond is None:
        return "-"
    return f"abnormal: {cond.message}" if cond.abnormal else "healthy"


def _source(volume: csi.Volume) -> str:
    if volume.content_source is None:
        return "-"
    kind, value = betterproto2.which_one_of(volume.content_source, "type")
    if kind == "snapshot" and isinstance(value, csi.VolumeContentSourceSnapshotSource):
        return f"snapshot {value.snapshot_id}"
    if kind == "volume" and isinstance(value, csi.VolumeContentSourceVolumeSource):
        return f"volume {value.volume_id}"
    return "-"


def _volume_row(volume: csi.Volume, status: Any = None) -> list[str]:
    published = ",".join(getattr(status, "published_node_ids", None) or []) or "-"
    return [volume.volume_id, volume.volume_context.get(NAME_CONTEXT, "-"), human(volume.capacity_bytes),
            pool_of(volume.volume_id), _condition(status), published, _source(volume)]


VOLUME_HEADER = ("VOLUME", "NAME", "SIZE", "POOL", "CONDITION", "PUBLISHED", "SOURCE")
SNAPSHOT_HEADER = ("SNAPSHOT", "SOURCE VOLUME", "SIZE", "READY", "CREATED", "GROUP")


def _snapshot_row(snap: csi.Snapshot) -> list[str]:
    created = snap.creation_time.isoformat(timespec="seconds") if snap.creation_time else "-"
    return [snap.snapshot_id, snap.source_volume_id, human(snap.size_bytes), "yes" if snap.ready_to_use else "no",
            created, snap.group_snapshot_id or "-"]


# ---- request building -------------------------------------------------------------------------------------------


def capability(args: argparse.Namespace) -> csi.VolumeCapability:
    mode = Mode.SINGLE_NODE_READER_ONLY if args.read_only_mode else Mode.SINGLE_NODE_WRITER
    access = csi.VolumeCapabilityAccessMode(mode=mode)
    if args.block:
        return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=access)
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=args.fs_type, mount_flags=list(args.mount_flag)),
        access_mode=access,
    )


def _content_source(args: argparse.Namespace) -> csi.VolumeContentSource | None:
    if args.from_snapshot and args.from_volume:
        raise UsageError("--from-snapshot and --from-volume exclude each other")
    if args.from_snapshot:
        return csi.VolumeContentSource(snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=args.from_snapshot))
    if args.from_volume:
        return csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=args.from_volume))
    return None


def _parameters(args: argparse.Namespace) -> dict[str, str]:
    params = parse_pairs(args.param)
    if getattr(args, "pool", ""):
        params[POOL_PARAMETER] = args.pool
    return params


# ---- commands ---------------------------------------------------------------------------------------------------


@dataclass
class Stubs:
    identity: csi.IdentityStub
    controller: csi.ControllerStub
    node: csi.NodeStub
    group: csi.GroupControllerStub
    timeout: float


Command = Callable[[Stubs, argparse.Namespace], Awaitable[Output]]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


async def _optional(call: Callable[[], Awaitable[betterproto2.Message]]) -> betterproto2.Message | str:
    try:
        return await call()
    except GRPCError as exc:
        return exc.status.name


@command("info")
async def _info(s: Stubs, args: argparse.Namespace) -> Output:
    t = s.timeout
    plugin = await s.identity.get_plugin_info(csi.GetPluginInfoRequest(), timeout=t)
    plugin_caps = await s.identity.get_plugin_capabilities(csi.GetPluginCapabilitiesRequest(), timeout=t)
    probe = await _optional(lambda: s.identity.probe(csi.ProbeRequest(), timeout=t))
    ctrl = await _optional(lambda: s.controller.controller_get_capabilities(
        csi.ControllerGetCapabilitiesRequest(), timeout=t))
    node = await _optional(lambda: s.node.node_get_capabilities(csi.NodeGetCapabilitiesRequest(), timeout=t))
    info = await _optional(lambda: s.node.node_get_info(csi.NodeGetInfoRequest(), timeout=t))
    group = await _optional(lambda: s.group.group_controller_get_capabilities(
        csi.GroupControllerGetCapabilitiesRequest(), timeout=t))
    data: dict[str, Any] = {"plugin": as_json(plugin), "plugin_capabilities": as_json(plugin_caps)}
    facts = [("driver", f"{plugin.name} {plugin.vendor_version}")]
    facts += [(key, value) for key, value in sorted(plugin.manifest.items())]
    facts.append(("plugin", ", ".join(_plugin_cap(c) for c in plugin_caps.capabilities) or "-"))
    for key, reply in (("probe", probe), ("controller", ctrl), ("node", node), ("group controller", group),
                       ("node info", info)):
        data[key.replace(" ", "_")] = reply if isinstance(reply, str) else as_json(reply)
        facts.append((key, reply if isinstance(reply, str) else _describe(reply)))
    return Output(data, facts=facts, ids=[plugin.name])


def _describe(reply: betterproto2.Message) -> str:
    """One line for an ``info`` answer."""
    if isinstance(reply, csi.ProbeResponse):
        return "not ready" if reply.ready is False else "ready"
    if isinstance(reply, csi.NodeGetInfoResponse):
        topology = dict(reply.accessible_topology.segments) if reply.accessible_topology else {}
        return f"{reply.node_id}, max volumes {reply.max_volumes_per_node or 'unlimited'}, topology {topology}"
    capabilities = getattr(reply, "capabilities", [])
    return ", ".join(c.rpc.type.name for c in capabilities if getattr(c, "rpc", None)) or "-"


def _plugin_cap(cap: csi.PluginCapability) -> str:
    if cap.service is not None:
        return cap.service.type.name
    if cap.volume_expansion is not None:
        return f"VOLUME_EXPANSION_{cap.volume_expansion.type.name}"
    return "?"


@command("probe")
async def _probe(s: Stubs, args: argparse.Namespace) -> Output:
    reply = await s.identity.probe(csi.ProbeRequest(), timeout=s.timeout)
    ready = _describe(reply)
    return Output(as_json(reply), facts=[("probe", ready)], ids=[ready])


@command("create")
async def _create(s: Stubs, args: argparse.Namespace) -> Output:
    req = csi.CreateVolumeRequest(
        name=args.name, capacity_range=csi.CapacityRange(required_bytes=args.size, limit_bytes=args.limit),
        volume_capabilities=[capability(args)], parameters=_parameters(args),
        mutable_parameters=parse_pairs(args.mutable_param), volume_content_source=_content_source(args),
        accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(
            segments={TOPOLOGY_KEY: args.node})]) if args.node else None,
    )
    reply = await s.controller.create_volume(req, timeout=s.timeout)
    assert reply.volume is not None
    return Output(as_json(reply), rows=[_volume_row(reply.volume)], header=VOLUME_HEADER, ids=[reply.volume.volume_id])


@command("delete")
async def _delete(s: Stubs, args: argparse.Namespace) -> Output:
    await s.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=args.volume_id), timeout=s.timeout)
    return _done("deleted", args, "")


@command("get")
async def _get(s: Stubs, args: argparse.Namespace) -> Output:
    reply = await s.controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=args.volume_id),
                                                     timeout=s.timeout)
    assert reply.volume is not None
    vol = reply.volume
    facts = [("volume", vol.volume_id), ("size", f"{human(vol.capacity_bytes)} ({vol.capacity_bytes} bytes)"),
             ("condition", _condition(reply.status)), ("source", _source(vol))]
    facts += [(f"context {k}", v) for k, v in sorted(vol.volume_context.items())]
    facts += [("published", ",".join(reply.status.published_node_ids or []) if reply.status else "")]
    facts[-1] = (facts[-1][0], facts[-1][1] or "-")
    return Output(as_json(reply), facts=facts, ids=[vol.volume_id])


@command("list")
async def _list(s: Stubs, args: argparse.Namespace) -> Output:
    token, entries, rows = "", [], []
    while True:
        reply = await s.controller.list_volumes(csi.ListVolumesRequest(max_entries=args.page_size,
                                                                       starting_token=token), timeout=s.timeout)
        for entry in reply.entries:
            entries.append(as_json(entry))
            if entry.volume is not None:
                rows.append(_volume_row(entry.volume, entry.status))
        token = reply.next_token
        if not token:
            return Output(entries, rows=rows, header=VOLUME_HEADER, ids=[r[0] for r in rows])


@command("capacity")
async def _capacity(s: Stubs, args: argparse.Namespace) -> Output:
    reply = await s.controller.get_capacity(csi.GetCapacityRequest(parameters=_parameters(args)), timeout=s.timeout)
    facts = [("pool", args.pool or "(default)"), ("available", human(reply.available_capacity)),
             ("maximum volume", human(reply.maximum_volume_size) if reply.maximum_volume_size is not None else "-"),
             ("minimum volume", human(reply.minimum_volume_size) if reply.minimum_volume_size is not None else "-")]
    return Output(as_json(reply), facts=facts, ids=[str(reply.available_capacity)])


@command("validate")
async def _validate(s: Stubs, args: argparse.Namespace) -> Output:
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=args.volume_id, volume_capabilities=[capability(args)],
                                                parameters=_parameters(args))
    reply = await s.controller.validate_volume_capabilities(req, timeout=s.timeout)
    verdict = "confirmed" if reply.confirmed is not None else f"not confirmed: {reply.message}"
    return Output(as_json(reply), facts=[("capability", verdict)], ids=[args.volume_id])


@command("modify")
async def _modify(s: Stubs, args: argparse.Namespace) -> Output:
    params = parse_pairs(args.param)
    for flag, key in MODIFY_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            params[key] = value
    if not params:
        raise UsageError("modify needs at least one parameter to change")
    await s.controller.controller_modify_volume(
        csi.ControllerModifyVolumeRequest(volume_id=args.volume_id, mutable_parameters=params), timeout=s.timeout)
    return Output({}, facts=[("modified", args.volume_id), *sorted(params.items())], ids=[args.volume_id])


#: ``ctl modify`` flags → the StorageClass / VolumeAttributesClass parameter they set.
MODIFY_FLAGS = {
    "read_iops": "localcsi.dev/read-iops",
    "write_iops": "localcsi.dev/write-iops",
    "read_bps": "localcsi.dev/read-bytes-per-second",
    "write_bps": "localcsi.dev/write-bytes-per-second",
}


@command("attach")
async def _attach(s: Stubs, args: argparse.Namespace) -> Output:
    req = csi.ControllerPublishVolumeRequest(volume_id=args.volume_id, node_id=args.node_id,
                                             volume_capability=capability(args), readonly=args.readonly)
    reply = await s.controller.controller_publish_volume(req, timeout=s.timeout)
    facts = [("attached", f"{args.volume_id} to {args.node_id}")]
    facts += [(f"publish context {k}", v) for k, v in sorted(reply.publish_context.items())]
    return Output(as_json(reply), facts=facts, ids=[args.volume_id])


def _done(what: str, args: argparse.Namespace, where: str) -> Output:
    """The output of a call that answers nothing: what was done to which volume, and where."""
    return Output({}, facts=[(what, f"{args.volume_id} {where}")], ids=[args.volume_id])


def _answers_nothing(name: str, done: str, call: Callable[[Stubs, argparse.Namespace], Awaitable[object]],
                     where: Callable[[argparse.Namespace], str]) -> None:
    """Register ``name``: one call whose reply is empty, reported as ``done`` to the volume ``where``."""
    async def run(s: Stubs, args: argparse.Namespace) -> Output:
        await call(s, args)
        return _done(done, args, where(args))

    command(name)(run)


_answers_nothing("detach", "detached", lambda s, a: s.controller.controller_unpublish_volume(
    csi.ControllerUnpublishVolumeRequest(volume_id=a.volume_id, node_id=a.node_id), timeout=s.timeout),
    lambda a: f"from {a.node_id}")
_answers_nothing("stage", "staged", lambda s, a: s.node.node_stage_volume(csi.NodeStageVolumeRequest(
    volume_id=a.volume_id, staging_target_path=a.staging_path, volume_capability=capability(a),
    publish_context=parse_pairs(a.context)), timeout=s.timeout), lambda a: f"at {a.staging_path}")
_answers_nothing("unstage", "unstaged", lambda s, a: s.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
    volume_id=a.volume_id, staging_target_path=a.staging_path), timeout=s.timeout),
    lambda a: f"from {a.staging_path}")
_answers_nothing("publish", "published", lambda s, a: s.node.node_publish_volume(csi.NodePublishVolumeRequest(
    volume_id=a.volume_id, staging_target_path=a.staging_path, target_path=a.target_path, readonly=a.readonly,
    volume_capability=capability(a), volume_context=parse_pairs(a.context)), timeout=s.timeout),
    lambda a: f"at {a.target_path}")
_answers_nothing("unpublish", "unpublished", lambda s, a: s.node.node_unpublish_volume(
    csi.NodeUnpublishVolumeRequest(volume_id=a.volume_id, target_path=a.target_path), timeout=s.timeout),
    lambda a: f"from {a.target_path}")


@command("stats")
async def _stats(s: Stubs, args: argparse.Namespace) -> Output:
    req = csi.NodeGetVolumeStatsRequest(volume_id=args.volume_id, volume_path=args.volume_path)
    reply = await s.node.node_get_volume_stats(req, timeout=s.timeout)
    rows = [[u.unit.name, str(u.total), str(u.used), str(u.available)] for u in reply.usage]
    cond = reply.volume_condition
    facts = [("condition", "-" if cond is None else (f"abnormal: {cond.message}" if cond.abnormal else "healthy"))]
    return Output(as_json(reply), rows=rows, header=("UNIT", "TOTAL", "USED", "AVAILABLE"), facts=facts,
                  ids=[args.volume_id])


@command("expand")
async def _expand(s: Stubs, args: argparse.Namespace) -> Output:
    rng = csi.CapacityRange(required_bytes=args.size)
    ctrl = await s.controller.controller_expand_volume(
        csi.ControllerExpandVolumeRequest(volume_id=args.volume_id, capacity_range=rng), timeout=s.timeout)
    data: dict[str, Any] = {"controller": as_json(ctrl)}
    facts = [("controller", f"{human(ctrl.capacity_bytes)}, node expansion "
                            f"{'required' if ctrl.node_expansion_required else 'not required'}")]
    if args.path:
        node = await s.node.node_expand_volume(csi.NodeExpandVolumeRequest(
            volume_id=args.volume_id, volume_path=args.path, capacity_range=rng,
            volume_capability=capability(args)), timeout=s.timeout)
        data["node"] = as_json(node)
        facts.append(("node", human(node.capacity_bytes)))
    return Output(data, facts=facts, ids=[args.volume_id])


@command("snapshot create")
async def _snapshot_create(s: Stubs, args: argparse.Namespace) -> Output:
    req = csi.CreateSnapshotRequest(source_volume_id=args.source_volume_id, name=args.name,
                                    parameters=parse_pairs(args.param))
    reply = await s.controller.create_snapshot(req, timeout=s.timeout)
    assert reply.snapshot is not None
    return Output(as_json(reply), rows=[_snapshot_row(reply.snapshot)], header=SNAPSHOT_HEADER,
                  ids=[reply.snapshot.snapshot_id])


@command("snapshot list")
async def _snapshot_list(s: Stubs, args: argparse.Namespace) -> Output:
    token, entries, rows = "", [], []
    while True:
        reply = await s.controller.list_snapshots(csi.ListSnapshotsRequest(
            source_volume_id=args.source, max_entries=args.page_size, starting_token=token), timeout=s.timeout)
        for entry in reply.entries:
            entries.append(as_json(entry))
            if entry.snapshot is not None:
                rows.append(_snapshot_row(entry.snapshot))
        token = reply.next_token
        if not token:
            return Output(entries, rows=rows, header=SNAPSHOT_HEADER, ids=[r[0] for r in rows])


@command("snapshot get")
async def _snapshot_get(s: Stubs, args: argparse.Namespace) -> Output:
    reply = await s.controller.get_snapshot(csi.GetSnapshotRequest(snapshot_id=args.snapshot_id), timeout=s.timeout)
    assert reply.snapshot is not None
    return Output(as_json(reply), rows=[_snapshot_row(reply.snapshot)], header=SNAPSHOT_HEADER,
                  ids=[reply.snapshot.snapshot_id])


@command("snapshot delete")
async def _snapshot_delete(s: Stubs, args: argparse.Namespace) -> Output:
    await s.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=args.snapshot_id), timeout=s.timeout)
    return Output({}, facts=[("deleted", args.snapshot_id)], ids=[args.snapshot_id])


@command("group create")
async def _group_create(s: Stubs, args: argparse.Namespace) -> Output:
    req = csi.CreateVolumeGroupSnapshotRequest(name=args.name, source_volume_ids=list(args.volume_ids),
                                               parameters=parse_pairs(args.param))
    reply = await s.group.create_volume_group_snapshot(req, timeout=s.timeout)
    return _group_output(reply.group_snapshot, as_json(reply))


def _group_ids(args: argparse.Namespace) -> dict[str, Any]:
    """The fields that name a group snapshot, as GetVolumeGroupSnapshot and DeleteVolumeGroupSnapshot take them."""
    return {"group_snapshot_id": args.group_snapshot_id, "snapshot_ids": list(args.snapshot_ids)}


@command("group get")
async def _group_get(s: Stubs, args: argparse.Namespace) -> Output:
    reply = await s.group.get_volume_group_snapshot(csi.GetVolumeGroupSnapshotRequest(**_group_ids(args)),
                                                    timeout=s.timeout)
    return _group_output(reply.group_snapshot, as_json(reply))


@command("group delete")
async def _group_delete(s: Stubs, args: argparse.Namespace) -> Output:
    await s.group.delete_volume_group_snapshot(csi.DeleteVolumeGroupSnapshotRequest(**_group_ids(args)),
                                               timeout=s.timeout)
    return Output({}, facts=[("deleted", args.group_snapshot_id)], ids=[args.group_snapshot_id])


def _group_output(group: csi.VolumeGroupSnapshot | None, data: Any) -> Output:
    assert group is not None
    facts = [("group snapshot", group.group_snapshot_id), ("ready", "yes" if group.ready_to_use else "no")]
    return Output(data, facts=facts, rows=[_snapshot_row(s) for s in group.snapshots], header=SNAPSHOT_HEADER,
                  ids=[group.group_snapshot_id])


# ---- the parser -------------------------------------------------------------------------------------------------


def _cap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block", action="store_true", help="raw block access instead of a filesystem")
    p.add_argument("--fs-type", default="", help="filesystem type, e.g. ext4 or xfs (default: the driver's)")
    p.add_argument("--mount-flag", action="append", default=[], help="mount option (repeatable)")
    p.add_argument("--read-only-mode", action="store_true", help="SINGLE_NODE_READER_ONLY access mode "
                                                                  "(default: SINGLE_NODE_WRITER)")


def _params(p: argparse.ArgumentParser, what: str = "StorageClass parameter") -> None:
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help=f"{what} (repeatable)")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ctl", help="talk to a CSI driver: every RPC as a subcommand", formatter_class=FORMAT,
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT") or DEFAULT_ENDPOINT,
                   help="unix:///path, an absolute socket path, or tcp://host:port [$CSI_ENDPOINT]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each RPC may take")
    p.add_argument("-o", "--output", choices=("table", "json", "id"), default="table",
                   help="table for people, json (the responses) for scripts, id: only the id made or named")
    cmds = p.add_subparsers(dest="ctl", required=True, metavar="COMMAND")
    _identity_and_controller_commands(cmds)
    _node_commands(cmds)
    _snapshot_commands(cmds)


FORMAT = argparse.ArgumentDefaultsHelpFormatter


def _cmd(cmds: Any, name: str, help_text: str, *positionals: str) -> argparse.ArgumentParser:
    """A subcommand taking ``positionals`` in order (one named ``*_path`` is a path, made absolute)."""
    parser: argparse.ArgumentParser = cmds.add_parser(name, help=help_text, formatter_class=FORMAT,
                                                      description=help_text)
    for positional in positionals:
        parser.add_argument(positional, type=os.path.abspath if positional.endswith("_path") else str)
    # -o also after the command (``ctl list -o json``); SUPPRESS keeps the value given before it.
    parser.add_argument("-o", "--output", choices=("table", "json", "id"), default=argparse.SUPPRESS,
                        help="as for ctl")
    return parser


def _identity_and_controller_commands(cmds: Any) -> None:
    _cmd(cmds, "info", "who the driver is and what it can do: plugin info, capabilities of every service, node info")
    _cmd(cmds, "probe", "Probe: is the driver ready")
    c = _cmd(cmds, "create", "CreateVolume (a blank volume, or a restore/clone with --from-snapshot/--from-volume)")
    c.add_argument("name", help="the CSI volume name (the PV name, in Kubernetes)")
    c.add_argument("--size", type=parse_size, default=1 << 30, help="required bytes (e.g. 1Gi, 500M)")
    c.add_argument("--limit", type=parse_size, default=0, help="limit bytes (0: none)")
    c.add_argument("--pool", default="", help="the storage pool (sets the localcsi.dev/pool parameter)")
    _params(c)
    c.add_argument("--mutable-param", action="append", default=[], metavar="KEY=VALUE",
                   help="VolumeAttributesClass parameter (repeatable)")
    c.add_argument("--from-snapshot", default="", metavar="SNAPSHOT_ID", help="restore this snapshot")
    c.add_argument("--from-volume", default="", metavar="VOLUME_ID", help="clone this volume")
    c.add_argument("--node", default="", help="requisite topology: the node that must hold the volume")
    _cap_args(c)
    _cmd(cmds, "delete", "DeleteVolume").add_argument("volume_id")
    _cmd(cmds, "get", "ControllerGetVolume: a volume's size, condition, context and publications").add_argument(
        "volume_id")
    ls = _cmd(cmds, "list", "ListVolumes (every page)")
    ls.add_argument("--page-size", type=int, default=0, help="entries per ListVolumes call (0: the driver's choice)")
    cap = _cmd(cmds, "capacity", "GetCapacity (of a pool, with --pool)")
    cap.add_argument("--pool", default="", help="the pool to ask about (default: the default pool)")
    _params(cap)
    val = _cmd(cmds, "validate", "ValidateVolumeCapabilities", "volume_id")
    _params(val)
    _cap_args(val)
    mod = _cmd(cmds, "modify", "ControllerModifyVolume: change a volume's mutable parameters (IO limits)", "volume_id")
    for flag, key in MODIFY_FLAGS.items():
        mod.add_argument(f"--{flag.replace('_', '-')}", default=None, metavar="N", help=f"sets {key}")
    _params(mod, "mutable parameter")
    for name, rpc in (("attach", "ControllerPublishVolume"), ("detach", "ControllerUnpublishVolume")):
        a = _cmd(cmds, name, rpc, "volume_id", "node_id")
        if name == "attach":
            a.add_argument("--readonly", action="store_true", help="publish read-only")
            _cap_args(a)


def _node_commands(cmds: Any) -> None:
    path = os.path.abspath
    st = _cmd(cmds, "stage", "NodeStageVolume: attach, format if blank, mount at the staging path",
              "volume_id", "staging_path")
    st.add_argument("--context", action="append", default=[], metavar="KEY=VALUE", help="publish context")
    _cap_args(st)
    _cmd(cmds, "unstage", "NodeUnstageVolume", "volume_id", "staging_path")
    pub = _cmd(cmds, "publish", "NodePublishVolume: bind the staged volume at the target path",
               "volume_id", "staging_path", "target_path")
    pub.add_argument("--readonly", action="store_true", help="publish read-only")
    pub.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                     help="volume context (e.g. csi.storage.k8s.io/pod.uid=UID)")
    _cap_args(pub)
    _cmd(cmds, "unpublish", "NodeUnpublishVolume", "volume_id", "target_path")
    _cmd(cmds, "stats", "NodeGetVolumeStats: usage and condition at a staged or published path",
         "volume_id", "volume_path")
    exp = _cmd(cmds, "expand", "ControllerExpandVolume, then NodeExpandVolume when --path is given", "volume_id")
    exp.add_argument("size", type=parse_size, help="new size (e.g. 2Gi)")
    exp.add_argument("--path", default=None, type=path, help="staged or published path, for the node step")
    _cap_args(exp)


def _snapshot_commands(cmds: Any) -> None:
    snap = _cmd(cmds, "snapshot", "CreateSnapshot, ListSnapshots, GetSnapshot, DeleteSnapshot")
    snaps = snap.add_subparsers(dest="snapshot", required=True, metavar="ACTION")
    sc = _cmd(snaps, "create", "CreateSnapshot", "source_volume_id")
    sc.add_argument("name", help="the CSI snapshot name")
    _params(sc, "VolumeSnapshotClass parameter")
    sl = _cmd(snaps, "list", "ListSnapshots (every page)")
    sl.add_argument("--source", default="", metavar="VOLUME_ID", help="only snapshots of this volume")
    sl.add_argument("--page-size", type=int, default=0, help="entries per ListSnapshots call")
    _cmd(snaps, "get", "GetSnapshot").add_argument("snapshot_id")
    _cmd(snaps, "delete", "DeleteSnapshot").add_argument("snapshot_id")
    grp = _cmd(cmds, "group", "CreateVolumeGroupSnapshot, GetVolumeGroupSnapshot, DeleteVolumeGroupSnapshot")
    groups = grp.add_subparsers(dest="group", required=True, metavar="ACTION")
    gc = _cmd(groups, "create", "CreateVolumeGroupSnapshot: one instant for every volume", "name")
    gc.add_argument("volume_ids", nargs="+")
    _params(gc, "VolumeGroupSnapshotClass parameter")
    for action in ("get", "delete"):
        g = _cmd(groups, action, f"{action.capitalize()}VolumeGroupSnapshot", "group_snapshot_id")
        g.add_argument("snapshot_ids", nargs="*", help="the group's member snapshot ids")


def _command_name(args: argparse.Namespace) -> str:
    if args.ctl == "snapshot":
        return f"snapshot {args.snapshot}"
    if args.ctl == "group":
        return f"group {args.group}"
    return str(args.ctl)


async def _main(args: argparse.Namespace) -> int:
    try:
        endpoint = Endpoint.parse(args.endpoint)
    except ValueError as exc:
        print(f"localcsi ctl: {exc}", file=sys.stderr)
        return 2
    channel = Channel(path=endpoint.path) if endpoint.path else Channel(host=endpoint.host, port=endpoint.port)
    stubs = Stubs(csi.IdentityStub(channel), csi.ControllerStub(channel), csi.NodeStub(channel),
                  csi.GroupControllerStub(channel), args.timeout)
    try:
        with anyio.fail_after(args.timeout + 5):
            output = await COMMANDS[_command_name(args)](stubs, args)
    except GRPCError as exc:
        print(f"error: {exc.status.name}" + (f": {exc.message}" if exc.message else ""), file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"localcsi ctl: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"error: {args.endpoint} did not answer within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (ConnectionError, OSError, StreamTerminatedError) as exc:
        print(f"error: cannot reach {args.endpoint}: {exc}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    text = output.render(args.output)
    if text:
        print(text)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        code = anyio.run(_main, args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``ctl list | head``): quietly, and without Python's second complaint at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return code

