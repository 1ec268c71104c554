"""``localcsi``: serve the driver, or talk to one (``ctl``).

The CLI is the only place that reads the environment, configures loguru and
builds the frozen :class:`DriverConfig`; everything below receives it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from loguru import logger

from csi.cli import serve
from csi.cli.logsink import BackgroundWriter

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


def build_parser(command: str = "") -> argparse.ArgumentParser:
    """The whole CLI; for ``command == "serve"`` only serve's options, so the driver never imports the client
    tools (bench, ctl, disks) and their dependencies."""
    parser = argparse.ArgumentParser(prog="localcsi", description="CSI driver for Kubernetes local storage")
    parser.add_argument("--version", action="version", version=f"localcsi {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    if command == "serve":
        return parser
    from csi.bench import main as bench
    from csi.cli import ctl, disks

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
        return serve.run(args, package_version())
    if args.command == "disks":
        from csi.cli import disks

        return disks.run(args)
    if args.command == "bench":
        from csi.bench import main as bench

        return bench.run(args)
    from csi.cli import ctl

    return ctl.run(args)
