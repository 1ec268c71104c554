"""``localcsi``: serve the driver, or talk to one (``ctl``).

The CLI is the only place that reads the environment, configures loguru and
builds the frozen :class:`DriverConfig`; everything below receives it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from loguru import logger

from backends import errors, faults
from backends.base import Features
from csi.logsink import BackgroundWriter

LOG_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "{extra[rpc]}{extra[volume_id]}<level>{message}</level>"
)


def package_version() -> str:
    try:
        return version("localcsi")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def configure_logging(level: str, fmt: str) -> None:
    """Install the one stderr sink; text for people, JSON (one object per line) for collectors."""
    logger.remove()
    if fmt == "json":
        logger.add(BackgroundWriter(sys.stderr), level=level.upper(), serialize=True, backtrace=False,
                   diagnose=False)
        return

    def patch(record: Any) -> None:
        extra = record["extra"]
        extra["rpc"] = f"[{extra['rpc']}] " if extra.get("rpc") else ""
        extra["volume_id"] = f"{extra['volume_id']}: " if extra.get("volume_id") else ""

    logger.configure(patcher=patch)
    # A worker thread writes the lines, so a slow stderr pipe never stalls the event loop.
    logger.add(BackgroundWriter(sys.stderr), level=level.upper(), format=LOG_FORMAT, colorize=None,
               backtrace=False, diagnose=False)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the CSI driver")
    p.add_argument("--endpoint", default=_env("CSI_ENDPOINT"), help="unix:///path or tcp://host:port [$CSI_ENDPOINT]")
    p.add_argument("--node-id", default=_env("NODE_ID"), help="this node's name [$NODE_ID; default: hostname]")
    p.add_argument("--driver-name", default="localcsi.dev")
    p.add_argument("--backend", default="loopfile", help="loopfile, lvm, rawdisk or an installed plugin")
    p.add_argument("--mode", choices=["all", "controller", "node"], default="all")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--loopfile-dir", default="/var/lib/localcsi/volumes", help="where loopfile images live")
    p.add_argument("--loopfile-overcommit", type=float, default=1.0,
                   help="how far thin images may promise beyond free space (1.0: never)")
    p.add_argument("--loopfile-buffered-io", action="store_true", help="attach loop devices without direct I/O")
    p.add_argument("--lvm-vg", default="", help="volume group for the lvm backend")
    p.add_argument("--lvm-thinpool", default="", help="thin pool LV inside --lvm-vg (enables thin volumes)")
    p.add_argument("--lvm-thin-overprovision", type=float, default=1.0)
    p.add_argument("--rawdisk-device", action="append", default=[], metavar="GLOB",
                   help="allow-list pattern of whole disks the rawdisk backend may claim (repeatable)")
    p.add_argument("--rawdisk-snapshot-dir", default=_env("LOCALCSI_RAWDISK_SNAPSHOT_DIR"), metavar="DIR",
                   help="where rawdisk snapshots (sparse images) are kept; without it rawdisk offers no snapshots "
                        "[$LOCALCSI_RAWDISK_SNAPSHOT_DIR]")
    p.add_argument("--command-prefix", default="", help='prefix for every system command, e.g. "nsenter -t 1 -m --"')
    p.add_argument("--kubelet-dir", action="append", default=[], metavar="DIR",
                   help="refuse staging/target paths outside this directory (repeatable; default: any path)")
    p.add_argument("--max-volumes-per-node", type=int, default=0)
    p.add_argument("--metrics-address", default="", help="HOST:PORT to serve Prometheus metrics on")
    p.add_argument("--shutdown-grace", type=float, default=20.0, help="seconds SIGTERM waits for in-flight calls")


def backend_options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "loopfile_dir": args.loopfile_dir,
        "loopfile_overcommit": args.loopfile_overcommit,
        "loopfile_buffered_io": args.loopfile_buffered_io,
        "lvm_vg": args.lvm_vg,
        "lvm_thinpool": args.lvm_thinpool,
        "lvm_thin_overprovision": args.lvm_thin_overprovision,
        "rawdisk_devices": tuple(args.rawdisk_device),
        "rawdisk_snapshot_dir": args.rawdisk_snapshot_dir,
        "command_prefix": tuple(shlex.split(args.command_prefix)),
    }


def run_serve(args: argparse.Namespace) -> int:
    import backends
    from backends.system.runner import ProcessRunner
    from csi import memory
    from csi.config import DriverConfig, Mode
    from csi.metrics import parse_address
    from csi.server import DriverServer, Endpoint

    if not args.endpoint:
        return fail("--endpoint (or $CSI_ENDPOINT) is required")
    try:
        Endpoint.parse(args.endpoint)
        if args.metrics_address:
            parse_address(args.metrics_address)
    except ValueError as exc:
        return fail(str(exc))
    mode = Mode(args.mode)
    try:
        faults.arm(_env(faults.ENV_VAR))
    except ValueError as exc:
        return fail(str(exc))
    node_id = args.node_id or socket.gethostname()
    if mode.has_storage and os.geteuid() != 0:
        return fail("node and all modes need root (mounts, loop devices); run as root or use --mode controller")
    config = DriverConfig(
        driver_name=args.driver_name, node_id=node_id, endpoint=args.endpoint, mode=mode, backend=args.backend,
        backend_options=backend_options(args), max_volumes_per_node=args.max_volumes_per_node,
        shutdown_grace_seconds=args.shutdown_grace, metrics_address=args.metrics_address,
        version=package_version(),
    )
    runner = ProcessRunner(prefix=config.backend_options["command_prefix"])  # type: ignore[arg-type]
    memory.limit_arenas()
    try:
        factory = backends.factory(config.backend)
        backend = factory(node_id=node_id, options=config.backend_options, runner=runner) if mode.has_storage else None
        features = backend.features if backend is not None else factory_features(
            config.backend, config.backend_options)
        server = DriverServer(config, backend, runner, features=features,
                              path_prefixes=[os.path.abspath(p) for p in args.kubelet_dir])
        anyio.run(server.run)
    except BaseException as exc:
        cause = _innermost(exc)
        if isinstance(cause, KeyboardInterrupt):
            return 0
        if isinstance(cause, errors.BackendError | OSError):
            return fail(str(cause))
        raise
    return 0


def _innermost(exc: BaseException) -> BaseException:
    """The one error inside (nested) task-group exception groups, or the group itself when there are several."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def factory_features(name: str, options: Mapping[str, object] | None = None) -> Features:
    """Features a controller-mode instance (no backend started) advertises for a backend.

    Controller mode serves only ControllerPublish/Unpublish and ControllerExpand, so only ``expansion`` matters:
    rawdisk volumes are whole disks and cannot grow. Snapshots and clones are stated as the node offers them
    (rawdisk: clones always, snapshots with ``--rawdisk-snapshot-dir``), so the two modes never disagree.
    """
    known = {"loopfile": Features(expansion=True), "lvm": Features(expansion=True),
             "rawdisk": Features(expansion=False, clones=True,
                                 snapshots=bool((options or {}).get("rawdisk_snapshot_dir")))}
    return known.get(name, Features())


def fail(message: str) -> int:
    logger.error(message)
    print(f"localcsi: {message}", file=sys.stderr)
    return 2


def build_parser(command: str = "") -> argparse.ArgumentParser:
    """The whole CLI; for ``command == "serve"`` only serve's options, so the driver never imports the client
    tools (bench, ctl, disks) and their dependencies."""
    parser = argparse.ArgumentParser(prog="localcsi", description="CSI driver for Kubernetes local storage")
    parser.add_argument("--version", action="version", version=f"localcsi {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve(sub)
    if command == "serve":
        return parser
    from csi import bench, ctl, disks

    ctl.add_parser(sub)
    bench.add_parser(sub)
    disks.add_parser(sub)
    return parser


def keep_pydantic_out(argv: Sequence[str]) -> None:
    """Before a ``serve`` process first imports betterproto2, make its optional pydantic import fail.

    betterproto2 imports pydantic whenever it is installed (here only because a dev dependency pulls it in;
    the image does not have it) and then asks pydantic about every message it parses or encodes. Our
    generated classes are plain dataclasses, so that costs ~6 MiB of RSS and CPU per call for nothing.
    """
    if list(argv[:1]) == ["serve"] and "betterproto2" not in sys.modules:
        sys.modules.setdefault("pydantic", None)  # type: ignore[arg-type]  # None: "import pydantic" fails


def main(argv: Sequence[str] | None = None) -> int:
    args_given = list(sys.argv[1:] if argv is None else argv)
    keep_pydantic_out(args_given)
    parser = build_parser(args_given[0] if args_given else "")
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    if args.command == "serve":
        return run_serve(args)
    if args.command == "disks":
        from csi import disks

        return disks.run(args)
    if args.command == "bench":
        from csi import bench

        return bench.run(args)
    from csi import ctl

    return ctl.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
