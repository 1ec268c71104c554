"""``python -m e2e.conformance``: run the suite against any CSI endpoint; the exit code is pytest's.

    python -m e2e.conformance --endpoint unix:///run/csi/csi.sock \\
        --staging-dir /var/tmp/csi-staging --target-dir /var/tmp/csi-target \\
        [--access mount|block] [--fs-type ext4] [--param k=v]... [-- pytest args]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SUITE_DIR.parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hack/conformance", description="CSI conformance suite (gRPC only)")
    p.add_argument("--endpoint", required=True, help="unix:///path/csi.sock or tcp://host:port")
    p.add_argument("--staging-dir", required=True, type=Path, help="created if missing; staging paths go below it")
    p.add_argument("--target-dir", required=True, type=Path, help="created if missing; target paths go below it")
    p.add_argument("--access", choices=["mount", "block"], default="mount")
    p.add_argument("--fs-type", default="ext4")
    p.add_argument("--volume-size", default="64Mi")
    p.add_argument("--expand-size", default="", help="default: twice --volume-size")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="CreateVolume parameter")
    p.add_argument("--secrets-file", default="", help="JSON object of secrets for every RPC that takes them")
    p.add_argument("--node-id", default="", help="node id for ControllerPublish (default: NodeGetInfo's)")
    p.add_argument("--rpc-timeout", default="120", help="seconds per RPC")
    return p


def pytest_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    argv = [
        str(SUITE_DIR), "-p", "no:cacheprovider",
        "--csi-endpoint", args.endpoint,
        "--csi-staging-dir", str(args.staging_dir.resolve()),
        "--csi-target-dir", str(args.target_dir.resolve()),
        "--csi-access", args.access,
        "--csi-fs-type", args.fs_type,
        "--csi-volume-size", args.volume_size,
        "--csi-rpc-timeout", args.rpc_timeout,
    ]
    if args.expand_size:
        argv += ["--csi-expand-size", args.expand_size]
    if args.secrets_file:
        argv += ["--csi-secrets-file", str(Path(args.secrets_file).resolve())]
    if args.node_id:
        argv += ["--csi-node-id", args.node_id]
    for item in args.param:
        argv += ["--csi-param", item]
    return [*argv, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    split = raw.index("--") if "--" in raw else len(raw)
    args = build_parser().parse_args(raw[:split])
    for directory in (args.staging_dir, args.target_dir):
        directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", *pytest_argv(args, raw[split + 1:])]
    return subprocess.run(cmd, cwd=REPO_ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
