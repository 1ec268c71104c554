"""``localcsi disks``: what the rawdisk backend sees on this node, without running a driver.

Lists every device the ``--rawdisk-device`` patterns match with its size, its
state (free, claimed by which volume, excluded) and the reason. Nothing is
written. ``--pv-manifests`` prints a PersistentVolume for each claimed disk
instead, so a rebuilt cluster can adopt volumes whose data survived on the
disks (``persistentVolumeReclaimPolicy: Retain``; the filesystem type is read
from the partition).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

import anyio

from backends.base import TOPOLOGY_KEY
from backends.errors import BackendError
from backends.rawdisk.inventory import Disk, State, scan
from backends.system import disks as sysdisks
from backends.system.runner import ProcessRunner, Runner
from csi.cli.units import human


def add_parser(sub: Any) -> None:
    p = sub.add_parser("disks", help="list the disks the rawdisk backend may use, and why others are excluded")
    p.add_argument("--rawdisk-device", action="append", default=[], metavar="GLOB",
                   help="allow-list pattern, as given to serve (repeatable)")
    p.add_argument("--config", default="", metavar="FILE",
                   help="a pools file, as given to serve: the disks of each of its rawdisk pools, with a POOL column")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.add_argument("--pv-manifests", action="store_true", help="print PersistentVolumes for the claimed disks")
    p.add_argument("--node", default="", help="node name for the PVs' node affinity (with --pv-manifests)")
    p.add_argument("--storage-class", default="", help="storageClassName of the PVs (with --pv-manifests)")
    p.add_argument("--driver-name", default="localcsi.dev")
    p.add_argument("--command-prefix", default="", help='prefix for every system command, e.g. "nsenter -t 1 -m --"')


def table(found: list[Disk], pools: dict[str, str] | None = None) -> str:
    """One row per disk; with ``pools`` (disk path -> pool), a POOL column first."""
    rows = [(*(("POOL",) if pools is not None else ()), "DEVICE", "SIZE", "STATE", "VOLUME", "REASON")]
    for disk in found:
        device = disk.path if disk.path == disk.real_path else f"{disk.path} ({disk.real_path})"
        pool = (pools.get(disk.path, "-"),) if pools is not None else ()
        rows.append((*pool, device, human(disk.size_bytes), disk.state.value, disk.volume_id or "-", disk.reason))
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:last])) + "  " + row[last] for row in rows
    )


async def scan_pools(runner: Runner, config: str) -> tuple[list[Disk], dict[str, str]]:
    """The disks of every rawdisk pool of the pools file ``config``, and which pool each disk is in."""
    from backends.rawdisk.options import RawdiskOptions
    from csi.cli.poolfile import load

    found: list[Disk] = []
    pools: dict[str, str] = {}
    for spec in load(config):
        if isinstance(spec.options, RawdiskOptions):
            disks = await scan(runner, list(spec.options.devices))
            found += disks
            pools.update((disk.path, spec.name) for disk in disks)
    return found, pools


def pv_manifest(disk: Disk, fs_type: str, *, node: str, storage_class: str, driver: str) -> str:
    """One PersistentVolume as YAML (every scalar JSON-quoted, which is valid YAML)."""
    claim = disk.claim
    if claim is None:
        raise ValueError(f"{disk.path} holds no volume")
    q = json.dumps
    lines = [
        "apiVersion: v1",
        "kind: PersistentVolume",
        "metadata:",
        f"  name: {q(claim.record.name or claim.volume_id)}",
        "  annotations:",
        f"    pv.kubernetes.io/provisioned-by: {q(driver)}",
        f"    localcsi.dev/disk: {q(disk.path)}",
        "spec:",
        "  capacity:",
        f"    storage: {q(str(claim.partition_bytes))}",
        f"  volumeMode: {'Filesystem' if fs_type else 'Block'}",
        "  accessModes: [\"ReadWriteOnce\"]",
        "  persistentVolumeReclaimPolicy: Retain",
    ]
    if storage_class:
        lines.append(f"  storageClassName: {q(storage_class)}")
    lines += [
        "  csi:",
        f"    driver: {q(driver)}",
        f"    volumeHandle: {q(claim.volume_id)}",
    ]
    if fs_type:
        lines.append(f"    fsType: {q(fs_type)}")
    lines += [
        "    volumeAttributes:",
        "      localcsi.dev/backend: \"rawdisk\"",
        f"      localcsi.dev/disk: {q(disk.path)}",
        "  nodeAffinity:",
        "    required:",
        "      nodeSelectorTerms:",
        "        - matchExpressions:",
        f"            - key: {q(TOPOLOGY_KEY)}",
        "              operator: In",
        f"              values: [{q(node)}]",
    ]
    return "\n".join(lines)


async def filesystem_of(runner: Runner, disk: Disk) -> str:
    """The filesystem inside a claimed disk's partition ("" for none or raw data)."""
    claim = disk.claim
    if claim is None:
        return ""
    try:
        probe = await sysdisks.probe_range(runner, disk.real_path, claim.partition_offset, claim.partition_bytes)
    except BackendError:
        return ""
    return probe.fs_type if probe.usage == "filesystem" else ""


async def _main(args: argparse.Namespace) -> int:
    runner = ProcessRunner(prefix=shlex.split(args.command_prefix))
    if bool(args.config) == bool(args.rawdisk_device):
        print("localcsi disks: give --rawdisk-device patterns or a pools file (--config), one of them",
              file=sys.stderr)
        return 2
    pools: dict[str, str] | None = None
    if args.config:
        found, pools = await scan_pools(runner, args.config)
    else:
        found = await scan(runner, args.rawdisk_device)
    if args.pv_manifests:
        if not args.node:
            print("localcsi disks: --pv-manifests needs --node", file=sys.stderr)
            return 2
        docs = []
        for disk in found:
            if disk.state is State.CLAIMED:
                fs_type = await filesystem_of(runner, disk)
                docs.append(pv_manifest(disk, fs_type, node=args.node, storage_class=args.storage_class,
                                        driver=args.driver_name))
        print("\n---\n".join(docs))
        return 0
    if args.json:
        entries = [{**d.to_json(), **({"pool": pools.get(d.path, "")} if pools is not None else {})} for d in found]
        print(json.dumps({"disks": entries}, indent=2))
    else:
        print(table(found, pools))
    return 0


def run(args: argparse.Namespace) -> int:
    from csi.cli.poolfile import PoolFileError

    try:
        return anyio.run(_main, args)
    except PoolFileError as exc:
        print(f"localcsi disks: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"localcsi disks: {exc}", file=sys.stderr)
        return 1
