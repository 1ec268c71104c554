"""``localcsi serve``: build the frozen configuration from flags and the environment, then run the driver.

Every backend's flags come from its settings class (:mod:`backends.options`), so an out-of-tree backend
registered under the ``localcsi.backends`` entry point gets its flags here too. Only the chosen backend's flags
are read; the driver's own code is imported only once the flags are valid.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from typing import Any

from loguru import logger

import backends
from backends import errors, faults
from backends.options import OptionError
from backends.pools import DEFAULT_POOL, PoolSpec
from csi.cli import poolfile
from csi.config import DriverConfig, Endpoint, Mode


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the CSI driver")
    p.add_argument("--endpoint", default=_env("CSI_ENDPOINT"), help="unix:///path or tcp://host:port [$CSI_ENDPOINT]")
    p.add_argument("--node-id", default=_env("NODE_ID"), help="this node's name [$NODE_ID; default: hostname]")
    p.add_argument("--driver-name", default="localcsi.dev", help="the CSI driver name (default: %(default)s)")
    p.add_argument("--backend", default=None,
                   help=f"storage backend of the one pool the flags declare: {', '.join(backends.available())} "
                        "(default: loopfile)")
    p.add_argument("--config", default=_env("LOCALCSI_CONFIG"), metavar="FILE",
                   help="pools file (YAML or TOML) declaring several storage pools; replaces --backend and the "
                        "backend flags [$LOCALCSI_CONFIG]")
    p.add_argument("--mode", choices=[m.value for m in Mode], default="all",
                   help="all: every service (node deployment); controller: no storage, for the cluster-wide "
                        "attacher and resizer; node: identity and node only (default: %(default)s)")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="(default: %(default)s)")
    p.add_argument("--log-level", default="INFO", help="(default: %(default)s)")
    for options in backends.all_options():
        options.add_arguments(p.add_argument_group(f"{options.kind} backend"))
    p.add_argument("--command-prefix", default="", help='prefix for every system command, e.g. "nsenter -t 1 -m --"')
    p.add_argument("--kubelet-dir", action="append", default=[], metavar="DIR",
                   help="refuse staging/target paths outside DIR (repeatable; default: any path)")
    p.add_argument("--block-dir", default="", metavar="DIR",
                   help="the driver's own directory for staged block volumes' device binds, kept across restarts "
                        "(default: <first --kubelet-dir>/plugins/<driver name>/block, else beside the unix socket)")
    p.add_argument("--max-volumes-per-node", type=int, default=0,
                   help="volumes this node may hold, as NodeGetInfo reports it (0: no limit)")
    p.add_argument("--metrics-address", default="", help="HOST:PORT to serve Prometheus metrics on")
    p.add_argument("--shutdown-grace", type=float, default=20.0,
                   help="seconds SIGTERM waits for in-flight calls (default: %(default)s)")


def config_from(args: argparse.Namespace, version: str) -> DriverConfig:
    """The frozen configuration the flags describe; ValueError (or OptionError) naming what is wrong."""
    if not args.endpoint:
        raise ValueError("--endpoint (or $CSI_ENDPOINT) is required")
    Endpoint.parse(args.endpoint)
    if args.metrics_address:
        from csi.metrics import parse_address

        parse_address(args.metrics_address)
    if args.max_volumes_per_node < 0:
        raise ValueError("--max-volumes-per-node must not be negative")
    if args.config:
        if args.backend is not None:
            raise ValueError("--backend and --config exclude each other: a pools file names each pool's backend")
        pools = poolfile.load(args.config)
    else:
        try:
            options = backends.options_class(args.backend or "loopfile").from_arguments(args)
        except errors.InvalidArgument as exc:
            raise ValueError(str(exc)) from exc
        pools = (PoolSpec(DEFAULT_POOL, options, default=True),)
    return DriverConfig(
        driver_name=args.driver_name,
        node_id=args.node_id or socket.gethostname(),
        endpoint=args.endpoint,
        pools=pools,
        pooled_ids=bool(args.config),
        mode=Mode(args.mode),
        command_prefix=tuple(shlex.split(args.command_prefix)),
        kubelet_dirs=tuple(os.path.abspath(p) for p in args.kubelet_dir),
        block_dir=os.path.abspath(args.block_dir) if args.block_dir else "",
        max_volumes_per_node=args.max_volumes_per_node,
        shutdown_grace_seconds=args.shutdown_grace,
        metrics_address=args.metrics_address,
        version=version,
    )


def run(args: argparse.Namespace, version: str) -> int:
    try:
        config = config_from(args, version)
        faults.arm(_env(faults.ENV_VAR))
    except ValueError as exc:  # OptionError included
        return fail(str(exc))
    if config.mode.has_storage and os.geteuid() != 0:
        return fail("node and all modes need root (mounts, loop devices); run as root or use --mode controller")
    import anyio

    from backends.pools import Pools
    from backends.system.runner import ProcessRunner
    from csi import memory
    from csi.server import DriverServer

    memory.limit_arenas()
    runner = ProcessRunner(prefix=config.command_prefix)
    try:
        backend = Pools(config.node_id, config.pools, runner, qualify_ids=config.pooled_ids) \
            if config.mode.has_storage else None
        server = DriverServer(config, backend, runner)
        anyio.run(server.run)
    except BaseException as exc:
        cause = _innermost(exc)
        if isinstance(cause, KeyboardInterrupt):
            return 0
        if isinstance(cause, errors.BackendError | OptionError | OSError):
            return fail(str(cause))
        raise
    return 0


def _innermost(exc: BaseException) -> BaseException:
    """The one error inside (nested) task-group exception groups, or the group itself when there are several."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def fail(message: str) -> int:
    logger.error(message)
    print(f"localcsi: {message}", file=sys.stderr)
    return 2
