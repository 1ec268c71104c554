"""``localcsi ctl``: a CSI client for people debugging a driver (ours or anyone's).

Every subcommand sends one RPC and prints the response as JSON; a gRPC error,
an unreachable endpoint or a timeout prints one line and exits 1, a bad
argument (an endpoint that is neither a unix socket path nor tcp://host:port)
exits 2, and a reader that stops early (``ctl list | head``) ends it quietly
with the shell's status for SIGPIPE (141).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import betterproto2
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from csi.config import Endpoint
from csi.gen.csi import v1 as csi

#: Exit status of a process whose reader went away (128 + SIGPIPE), as a shell reports it.
EXIT_BROKEN_PIPE = 141
UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
         "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
Mode = csi.VolumeCapabilityAccessModeMode


def parse_size(text: str) -> int:
    """``10Gi``, ``500M``, ``1048576`` → bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]i?)?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(match.group(1)) * UNITS[(match.group(2) or "").lower()]


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def capability(args: argparse.Namespace) -> csi.VolumeCapability:
    mode = Mode.SINGLE_NODE_READER_ONLY if getattr(args, "read_only_mode", False) else Mode.SINGLE_NODE_WRITER
    access = csi.VolumeCapabilityAccessMode(mode=mode)
    if args.block:
        return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=access)
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=args.fs_type, mount_flags=list(args.mount_flag or [])),
        access_mode=access,
    )


def endpoint(text: str) -> str:
    """An argparse type: ``unix:///path``, ``/path`` or ``tcp://host:port``, refused at once otherwise."""
    try:
        Endpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def channel(endpoint: str) -> Channel:
    ep = Endpoint.parse(endpoint)
    return Channel(path=ep.path) if ep.path else Channel(host=ep.host, port=ep.port)


def _cap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block", action="store_true", help="raw block access instead of a filesystem")
    p.add_argument("--fs-type", default="", help="ext4 or xfs (default: the driver's)")
    p.add_argument("--mount-flag", action="append", help="mount option (repeatable)")
    p.add_argument("--read-only-mode", action="store_true", help="SINGLE_NODE_READER_ONLY access mode")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ctl", help="talk to a CSI driver")
    p.add_argument("--endpoint", type=endpoint, default="unix:///run/localcsi/csi.sock",
                   help="unix:///path, /path or tcp://host:port (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0)
    cmds = p.add_subparsers(dest="ctl", required=True)
    cmds.add_parser("info", help="plugin info, plugin/controller/node capabilities, node info")
    cmds.add_parser("probe")
    c = cmds.add_parser("create", help="CreateVolume")
    c.add_argument("name")
    c.add_argument("--size", type=parse_size, default=1 << 30)
    c.add_argument("--limit", type=parse_size, default=0)
    c.add_argument("--param", action="append", default=[], help="StorageClass parameter KEY=VALUE")
    c.add_argument("--node", default="", help="requisite topology node")
    _cap_args(c)
    for name in ("delete", "get"):
        cmds.add_parser(name).add_argument("volume_id")
    ls = cmds.add_parser("list", help="ListVolumes (all pages)")
    ls.add_argument("--page-size", type=int, default=0)
    cap = cmds.add_parser("capacity", help="GetCapacity")
    cap.add_argument("--param", action="append", default=[])
    att = cmds.add_parser("attach", help="ControllerPublishVolume")
    att.add_argument("volume_id")
    att.add_argument("node_id")
    _cap_args(att)
    det = cmds.add_parser("detach", help="ControllerUnpublishVolume")
    det.add_argument("volume_id")
    det.add_argument("node_id")
    st = cmds.add_parser("stage", help="NodeStageVolume")
    st.add_argument("volume_id")
    st.add_argument("staging_path")
    st.add_argument("--context", action="append", default=[], help="publish context KEY=VALUE")
    _cap_args(st)
    ust = cmds.add_parser("unstage", help="NodeUnstageVolume")
    ust.add_argument("volume_id")
    ust.add_argument("staging_path")
    pub = cmds.add_parser("publish", help="NodePublishVolume")
    pub.add_argument("volume_id")
    pub.add_argument("staging_path")
    pub.add_argument("target_path")
    pub.add_argument("--readonly", action="store_true")
    _cap_args(pub)
    upub = cmds.add_parser("unpublish", help="NodeUnpublishVolume")
    upub.add_argument("volume_id")
    upub.add_argument("target_path")
    stats = cmds.add_parser("stats", help="NodeGetVolumeStats")
    stats.add_argument("volume_id")
    stats.add_argument("volume_path")
    exp = cmds.add_parser("expand", help="ControllerExpandVolume, then NodeExpandVolume when a path is given")
    exp.add_argument("volume_id")
    exp.add_argument("size", type=parse_size)
    exp.add_argument("--path", default="", help="published or staged path, for the node step")
    _cap_args(exp)


def as_json(message: betterproto2.Message) -> Any:
    return message.to_dict(casing=betterproto2.Casing.SNAKE)


async def _info(ch: Channel, args: argparse.Namespace, t: float) -> Any:
    ident, ctrl, node = csi.IdentityStub(ch), csi.ControllerStub(ch), csi.NodeStub(ch)
    out: dict[str, Any] = {
        "plugin": as_json(await ident.get_plugin_info(csi.GetPluginInfoRequest(), timeout=t)),
        "plugin_capabilities": as_json(await ident.get_plugin_capabilities(csi.GetPluginCapabilitiesRequest(),
                                                                           timeout=t)),
    }
    for key, call in (("controller_capabilities", lambda: ctrl.controller_get_capabilities(
            csi.ControllerGetCapabilitiesRequest(), timeout=t)),
                      ("node_capabilities", lambda: node.node_get_capabilities(csi.NodeGetCapabilitiesRequest(),
                                                                              timeout=t)),
                      ("node_info", lambda: node.node_get_info(csi.NodeGetInfoRequest(), timeout=t))):
        try:
            out[key] = as_json(await call())
        except GRPCError as exc:
            out[key] = {"error": exc.status.name}
    return out


async def _list(ch: Channel, args: argparse.Namespace, t: float) -> Any:
    stub, token, entries = csi.ControllerStub(ch), "", []
    while True:
        resp = await stub.list_volumes(csi.ListVolumesRequest(max_entries=args.page_size, starting_token=token),
                                       timeout=t)
        entries += [as_json(e) for e in resp.entries]
        token = resp.next_token
        if not token:
            return entries


def _requests(args: argparse.Namespace) -> Callable[[Channel, float], Awaitable[betterproto2.Message]]:
    """The single-RPC subcommands: build the request, pick the stub method."""
    cmd = args.ctl
    c, n = csi.ControllerStub, csi.NodeStub
    if cmd == "probe":
        return lambda ch, t: csi.IdentityStub(ch).probe(csi.ProbeRequest(), timeout=t)
    if cmd == "create":
        req = csi.CreateVolumeRequest(
            name=args.name, capacity_range=csi.CapacityRange(required_bytes=args.size, limit_bytes=args.limit),
            volume_capabilities=[capability(args)], parameters=parse_pairs(args.param),
            accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(
                segments={"topology.localcsi.dev/node": args.node})]) if args.node else None,
        )
        return lambda ch, t: c(ch).create_volume(req, timeout=t)
    if cmd == "delete":
        return lambda ch, t: c(ch).delete_volume(csi.DeleteVolumeRequest(volume_id=args.volume_id), timeout=t)
    if cmd == "get":
        return lambda ch, t: c(ch).controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=args.volume_id),
                                                         timeout=t)
    if cmd == "capacity":
        return lambda ch, t: c(ch).get_capacity(csi.GetCapacityRequest(parameters=parse_pairs(args.param)), timeout=t)
    if cmd == "attach":
        areq = csi.ControllerPublishVolumeRequest(volume_id=args.volume_id, node_id=args.node_id,
                                                  volume_capability=capability(args))
        return lambda ch, t: c(ch).controller_publish_volume(areq, timeout=t)
    if cmd == "detach":
        dreq = csi.ControllerUnpublishVolumeRequest(volume_id=args.volume_id, node_id=args.node_id)
        return lambda ch, t: c(ch).controller_unpublish_volume(dreq, timeout=t)
    if cmd == "stage":
        sreq = csi.NodeStageVolumeRequest(volume_id=args.volume_id, staging_target_path=args.staging_path,
                                          volume_capability=capability(args), publish_context=parse_pairs(args.context))
        return lambda ch, t: n(ch).node_stage_volume(sreq, timeout=t)
    if cmd == "unstage":
        ureq = csi.NodeUnstageVolumeRequest(volume_id=args.volume_id, staging_target_path=args.staging_path)
        return lambda ch, t: n(ch).node_unstage_volume(ureq, timeout=t)
    if cmd == "publish":
        preq = csi.NodePublishVolumeRequest(volume_id=args.volume_id, staging_target_path=args.staging_path,
                                            target_path=args.target_path, readonly=args.readonly,
                                            volume_capability=capability(args))
        return lambda ch, t: n(ch).node_publish_volume(preq, timeout=t)
    if cmd == "unpublish":
        upreq = csi.NodeUnpublishVolumeRequest(volume_id=args.volume_id, target_path=args.target_path)
        return lambda ch, t: n(ch).node_unpublish_volume(upreq, timeout=t)
    if cmd == "stats":
        streq = csi.NodeGetVolumeStatsRequest(volume_id=args.volume_id, volume_path=args.volume_path)
        return lambda ch, t: n(ch).node_get_volume_stats(streq, timeout=t)
    raise SystemExit(f"unknown ctl command {cmd}")


async def _expand(ch: Channel, args: argparse.Namespace, t: float) -> Any:
    rng = csi.CapacityRange(required_bytes=args.size)
    out = {"controller": as_json(await csi.ControllerStub(ch).controller_expand_volume(
        csi.ControllerExpandVolumeRequest(volume_id=args.volume_id, capacity_range=rng), timeout=t))}
    if args.path:
        out["node"] = as_json(await csi.NodeStub(ch).node_expand_volume(csi.NodeExpandVolumeRequest(
            volume_id=args.volume_id, volume_path=args.path, capacity_range=rng, volume_capability=capability(args)),
            timeout=t))
    return out


async def _main(args: argparse.Namespace) -> int:
    ch = channel(args.endpoint)
    try:
        if args.ctl == "info":
            result = await _info(ch, args, args.timeout)
        elif args.ctl == "list":
            result = await _list(ch, args, args.timeout)
        elif args.ctl == "expand":
            result = await _expand(ch, args, args.timeout)
        else:
            result = as_json(await _requests(args)(ch, args.timeout))
    except GRPCError as exc:
        print(f"error: {exc.status.name}: {exc.message}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"error: {args.endpoint} did not answer within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (ConnectionError, OSError, StreamTerminatedError) as exc:
        print(f"error: cannot reach {args.endpoint}: {exc}", file=sys.stderr)
        return 1
    finally:
        ch.close()
    return emit(result)


def emit(result: Any) -> int:
    """Print ``result`` as JSON; a reader that went away (``| head``) is not an error worth a traceback."""
    try:
        json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
        print(flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null, so the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return 0


def run(args: argparse.Namespace) -> int:
    return anyio.run(_main, args)
