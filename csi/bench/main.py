"""``localcsi bench``: latency, throughput, cost and scale of a CSI driver, and the floor beneath it.

Point it at any CSI endpoint (``--endpoint``), or let it start our driver
(``--spawn-loopfile DIR``, which also measures start-up). It prints a table and,
with ``--json FILE``, writes every figure. The phases:

* control plane: Probe latency; Create+Delete throughput at each ``--in-flight``;
  the provisioning path Create → ControllerPublish → NodeStage (mkfs) →
  NodePublish and back, per filesystem; NodeGetVolumeStats; NodePublish +
  NodeUnpublish pairs;
* scale: ListVolumes and GetCapacity with ``--scale-volumes`` volumes, and
  CreateVolume latency at 0 and at that many;
* the floor: the same provisioning path with the bare commands (root, local);
* cost: the driver's RSS (idle, after, peak) and CPU per operation (``--pid``);
* data path (``--fio``): fio on published volumes against the backing file.

``--quick`` runs every phase but fio with few calls each (under 30 s); progress lines go to standard error
while phases run; ``--plot FILE.png`` draws the figures (the optional ``plot`` extra: matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import anyio

from csi.bench import phases
from csi.bench.client import CallFailed, CsiClient
from csi.bench.stats import ProcSample

MIB = 1 << 20
DEFAULT_FS = ("ext4", "xfs")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark a CSI driver (ours or another) and the bare commands")
    p.add_argument("--endpoint", default="", help="unix:///path or tcp://host:port of the driver to measure")
    p.add_argument("--spawn-loopfile", metavar="DIR", default="",
                   help="start `localcsi serve --backend loopfile` with its socket and images in DIR")
    p.add_argument("--driver-arg", action="append", default=[], help="extra argument for the spawned driver")
    p.add_argument("--pid", type=int, default=0, help="the driver's pid, for memory and CPU figures")
    p.add_argument("--client", choices=["grpclib", "grpcio"], default="grpclib",
                   help="the gRPC client: grpclib (the driver's own dependency) or grpcio (optional, the client "
                        "the reference figures were measured with; hack/bench uses it) (default: %(default)s)")
    p.add_argument("--work-dir", default="", help="where staging and target paths go (default: a temp dir)")
    p.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE", help="CreateVolume parameter")
    p.add_argument("--json", dest="json_file", default="", metavar="FILE", help="write all figures as JSON")
    p.add_argument("--probe-calls", type=int, default=None)
    p.add_argument("--in-flight", type=int, action="append", default=[], help="Create+Delete concurrency (16, 64)")
    p.add_argument("--cd-volumes", type=int, default=None, help="Create+Delete pairs per concurrency level")
    p.add_argument("--cd-size", type=int, default=16 * MIB, help="bytes per Create+Delete and scale volume")
    p.add_argument("--cd-fs-type", default="ext4")
    p.add_argument("--fs-type", action="append", default=[], help="filesystems for the provisioning path")
    p.add_argument("--iterations", type=int, default=None, help="provisioning paths per filesystem")
    p.add_argument("--volume-size", type=int, default=None, help="bytes per provisioned volume")
    p.add_argument("--stats-calls", type=int, default=None, help="NodeGetVolumeStats calls per provisioned volume")
    p.add_argument("--pair-calls", type=int, default=None, help="NodePublish+NodeUnpublish pairs per volume")
    p.add_argument("--scale-volumes", type=int, default=None)
    p.add_argument("--scale-samples", type=int, default=None)
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument("--no-bare", action="store_true", help="skip the bare-commands baseline")
    p.add_argument("--bare-dir", default="", help="where the baseline's images go (default: beside the work dir)")
    p.add_argument("--bare-lvm-vg", default="", metavar="VG",
                   help="bare baseline with LVs in this volume group (lvcreate/lvremove) instead of loop files")
    p.add_argument("--fio", action="store_true", help="also run the fio data-path comparison")
    p.add_argument("--fio-runtime", type=int, default=10, help="seconds per fio job")
    p.add_argument("--fio-size", type=int, default=256 * MIB, help="bytes of the fio file/device")
    p.add_argument("--fio-variants", action="store_true", help="also fio bare loop devices with other settings")
    p.add_argument("--fio-baseline-device", default="", metavar="DEV",
                   help="compare the data path with this block device instead of a backing file: a twin of the "
                        "driver's storage (lvm: a device like its PV; rawdisk: a disk like its pool's). fio "
                        "overwrites it")
    p.add_argument("--quick", action="store_true",
                   help="a short run (under 30 s on a loopfile driver): every phase but fio, with few calls each")
    p.add_argument("--plot", default="", metavar="FILE.png",
                   help="also draw the latencies and throughput of each phase (needs matplotlib: pip install "
                        "'localcsi[plot]')")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on standard error")
    p.add_argument("--compare-pools", type=int, default=0, metavar="N",
                   help="with --spawn-loopfile: also start a driver of N loopfile pools and compare its CreateVolume "
                        "latency (in the last pool) with the one-pool driver's, in alternating rounds")
    p.add_argument("--only", action="append", default=[],
                   choices=["probe", "create-delete", "provision", "bare", "scale", "fio"],
                   help="run only these phases (repeatable)")


@dataclass(frozen=True)
class Options:
    endpoint: str
    pid: int
    client: str
    work_dir: str
    bare_dir: str
    parameters: dict[str, str]
    args: argparse.Namespace

    def wants(self, phase: str) -> bool:
        return not self.args.only or phase in self.args.only


# ---------------------------------------------------------------- spawned driver


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    endpoint: str
    startup_seconds: float


def spawn_driver(directory: str, storage: list[str], extra: list[str]) -> Spawned:
    """``localcsi serve`` with its socket and log in ``directory`` and ``storage`` (the backend's or pools' flags)."""
    os.makedirs(directory, exist_ok=True)
    socket_path = os.path.join(directory, "csi.sock")
    endpoint = f"unix://{socket_path}"
    argv = [sys.executable, "-m", "csi.cli", "serve", "--endpoint", endpoint, *storage,
            "--node-id", platform.node() or "bench-node", *extra]
    with open(os.path.join(directory, "driver.log"), "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return Spawned(proc=proc, endpoint=endpoint, startup_seconds=started)


def spawn_loopfile(directory: str, extra: list[str]) -> Spawned:
    return spawn_driver(directory, ["--backend", "loopfile", "--loopfile-dir", os.path.join(directory, "volumes")],
                        extra)


def spawn_pools(directory: str, count: int, extra: list[str]) -> Spawned:
    """A driver with ``count`` loopfile pools (``p0`` … the default is ``p0``), each in a directory of its own."""
    os.makedirs(directory, exist_ok=True)
    config = os.path.join(directory, "pools.yaml")
    with open(config, "w", encoding="utf-8") as out:
        out.write("default: p0\npools:\n")
        for i in range(count):
            out.write(f"  p{i}:\n    backend: loopfile\n    directory: {os.path.join(directory, f'p{i}')}\n")
    return spawn_driver(directory, ["--config", config], extra)


async def wait_ready(client: CsiClient, spawned: Spawned, limit_seconds: float = 60.0) -> float:
    """Seconds from spawning to the first Probe answering ready."""
    with anyio.fail_after(limit_seconds):
        while True:
            if spawned.proc.poll() is not None:
                raise RuntimeError(f"the driver exited with {spawned.proc.returncode}; see its driver.log")
            try:
                if (await client.probe()).ready:
                    return time.perf_counter() - spawned.startup_seconds
            except CallFailed:
                pass
            await anyio.sleep(0.005)


def stop(spawned: Spawned) -> int:
    if spawned.proc.poll() is None:
        spawned.proc.send_signal(signal.SIGTERM)
        try:
            spawned.proc.wait(60)
        except subprocess.TimeoutExpired:
            spawned.proc.kill()
            spawned.proc.wait(10)
    return spawned.proc.returncode


# ---------------------------------------------------------------- orchestration


def memory(sample: ProcSample | None) -> dict[str, float] | None:
    if sample is None:
        return None
    return {"rss_mib": round(sample.rss_bytes / MIB, 1), "peak_rss_mib": round(sample.hwm_bytes / MIB, 1)}


def record_load(report: dict[str, Any], phase: str) -> None:
    """The 1-minute load average when ``phase`` ended: the machine is shared, figures mean little without it."""
    report.setdefault("load_average", {})[phase] = round(os.getloadavg()[0], 2)


#: What --quick sets (a flag given explicitly keeps its value): about 20 s against a loopfile driver here.
QUICK = {"probe_calls": 200, "in_flight": [16], "cd_volumes": 100, "iterations": 2, "fs_type": ["ext4"],
         "stats_calls": 5, "pair_calls": 3, "scale_volumes": 50, "scale_samples": 10, "volume_size": 64 * MIB}
#: A progress line on standard error every this many seconds while a phase runs.
PROGRESS_SECONDS = 5.0


#: The defaults of the options --quick changes.
NORMAL = {"probe_calls": 2000, "in_flight": [], "cd_volumes": 2000, "iterations": 10, "fs_type": [],
          "stats_calls": 20, "pair_calls": 10, "scale_volumes": 1000, "scale_samples": 50, "volume_size": 512 * MIB}


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options not given on the command line: from the --quick preset, or the full run's defaults."""
    preset = QUICK if getattr(args, "quick", False) else NORMAL
    for key, value in preset.items():
        if getattr(args, key, None) in (None, []):
            setattr(args, key, value)
    return args


class Progress:
    """One line per phase on standard error when it starts and ends, and one every few seconds while it runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"bench [{time.monotonic() - self.started:6.1f} s] {text}", file=sys.stderr, flush=True)

    async def run(self, name: str, phase: Any) -> Any:
        """Await ``phase`` (a coroutine), telling how long it has taken so far."""
        self.say(f"{name} ...")
        began = time.monotonic()
        async with anyio.create_task_group() as tg:
            async def tick() -> None:
                while True:
                    await anyio.sleep(PROGRESS_SECONDS)
                    self.say(f"{name}: {time.monotonic() - began:.0f} s so far")

            tg.start_soon(tick)
            try:
                return await phase
            finally:
                tg.cancel_scope.cancel()
                self.say(f"{name} done in {time.monotonic() - began:.1f} s")


async def run_phases(opts: Options, target: phases.Target, report: dict[str, Any]) -> None:
    a = settle(opts.args)
    progress = Progress(not getattr(a, "no_progress", True))
    report["memory_idle"] = memory(target.sample())
    record_load(report, "start")
    if opts.wants("probe"):
        report["probe"] = await progress.run("probe", phases.probe(target, a.probe_calls))
        record_load(report, "probe")
    if opts.wants("create-delete"):
        report["create_delete"] = [
            await progress.run(f"create-delete, {n} in flight",
                               phases.create_delete(target, n, a.cd_volumes, a.cd_size, a.cd_fs_type))
            for n in (a.in_flight or [16, 64])
        ]
        record_load(report, "create_delete")
    fs_types = a.fs_type or list(DEFAULT_FS)
    if opts.wants("provision"):
        report["provision"] = [
            await progress.run(f"provisioning path, {fs}", phases.provision(
                target, fs, iterations=a.iterations, size=a.volume_size, stats_calls=a.stats_calls,
                pair_calls=a.pair_calls))
            for fs in fs_types
        ]
        record_load(report, "provision")
    if opts.wants("bare") and not a.no_bare:
        from csi.bench.bare import provision_bare

        try:
            report["bare"] = [await progress.run(f"bare commands, {fs}", provision_bare(
                opts.bare_dir, fs, a.iterations, a.volume_size, lvm_vg=a.bare_lvm_vg)) for fs in fs_types]
        except Exception as exc:  # keep every figure measured so far; say why the floor is missing
            report["bare_error"] = f"{type(exc).__name__}: {exc}"
            print(f"localcsi bench: the bare baseline failed: {report['bare_error']}", file=sys.stderr)
        record_load(report, "bare")
    if opts.wants("scale"):
        report["scale"] = await progress.run(f"scale, {a.scale_volumes} volumes", phases.scale(
            target, existing=a.scale_volumes, samples=a.scale_samples, size=a.cd_size, fs_type=a.cd_fs_type,
            page_size=a.page_size, in_flight=16))
        record_load(report, "scale")
    if a.fio and opts.wants("fio"):
        from csi.bench.fio import data_path

        report["fio"] = await progress.run("fio", data_path(target, opts.bare_dir, a.fio_size, a.fio_runtime,
                                                            a.fio_variants, baseline_device=a.fio_baseline_device))
        record_load(report, "fio")
    report["memory_after"] = memory(target.sample())


async def close_transport(transport: Any) -> None:
    """Close a client transport: grpclib's closes asynchronously, grpcio's at once."""
    aclose = getattr(transport, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        transport.close()


#: Rounds of Create+Delete against each driver, alternating, for --compare-pools.
POOL_ROUNDS = 3


async def compare_pools(opts: Options, one: phases.Target, count: int, progress: Progress) -> dict[str, Any]:
    """CreateVolume p50 of a driver of ``count`` pools (volumes in its last pool) against the one-pool driver's."""
    from backends.pools import POOL_PARAMETER
    from csi.bench.client import open_transport

    a = opts.args
    spawned = spawn_pools(os.path.join(opts.bare_dir, "bench-pools"), count, list(a.driver_arg))
    transport = open_transport(spawned.endpoint, opts.client)
    try:
        client = CsiClient(transport)
        await wait_ready(client, spawned)
        many = await phases.discover(client, opts.work_dir, {**opts.parameters, POOL_PARAMETER: f"p{count - 1}"},
                                     spawned.proc.pid)
        many = dataclasses.replace(many, run_id=one.run_id + "p")
        p50s: dict[str, list[float]] = {"one": [], "many": []}
        for round_ in range(POOL_ROUNDS):
            for key, target in (("one", one), ("many", many)):
                done = await progress.run(f"pools: round {round_ + 1}, {key} pool{'s' if key == 'many' else ''}",
                                          phases.create_delete(target, 16, a.cd_volumes, a.cd_size, a.cd_fs_type))
                p50s[key].append(done["latency"]["CreateVolume"]["p50_ms"])
    finally:
        await close_transport(transport)
        stop(spawned)
    one_p50, many_p50 = statistics.median(p50s["one"]), statistics.median(p50s["many"])
    return {"pools": count, "rounds": POOL_ROUNDS, "volumes_per_round": a.cd_volumes, "one_pool_p50_ms": one_p50,
            "pools_p50_ms": many_p50, "ratio": round(many_p50 / one_p50, 3) if one_p50 else None,
            "round_p50_ms": p50s}


async def bench(opts: Options, spawned: Spawned | None) -> dict[str, Any]:
    from csi.bench.client import open_transport

    settle(opts.args)
    transport = open_transport(opts.endpoint, opts.client)
    client = CsiClient(transport)
    report: dict[str, Any] = {"machine": machine(), "endpoint": opts.endpoint, "client": opts.client,
                              "arguments": {k: v for k, v in vars(opts.args).items() if k != "func"}}
    try:
        if spawned is not None:
            report["startup_seconds"] = round(await wait_ready(client, spawned), 3)
        info = await client.plugin_info()
        report["driver"] = {"name": info.name, "version": info.vendor_version, **dict(info.manifest)}
        target = await phases.discover(client, opts.work_dir, opts.parameters, opts.pid)
        report["target"] = {"node_id": target.node_id, "controller_publish": target.controller_publish,
                            "node_stage": target.node_stage}
        await run_phases(opts, target, report)
        if opts.args.compare_pools:
            progress = Progress(not opts.args.no_progress)
            report["pools"] = await compare_pools(opts, target, opts.args.compare_pools, progress)
    finally:
        await close_transport(transport)
    return report


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "python": platform.python_version(), "hostname": platform.node()}


def run(args: argparse.Namespace) -> int:
    if bool(args.endpoint) == bool(args.spawn_loopfile):
        print("localcsi bench: give exactly one of --endpoint or --spawn-loopfile", file=sys.stderr)
        return 2
    if args.client == "grpcio" and importlib.util.find_spec("grpc") is None:
        print("localcsi bench: --client grpcio needs grpcio (pip install grpcio); the default client, grpclib, "
              "needs nothing more", file=sys.stderr)
        return 2
    if args.compare_pools and (not args.spawn_loopfile or args.compare_pools < 2):
        print("localcsi bench: --compare-pools N needs --spawn-loopfile and N of at least 2", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("localcsi bench: --plot needs matplotlib (pip install 'localcsi[plot]')", file=sys.stderr)
        return 2
    parameters = dict(pair.partition("=")[::2] for pair in args.parameter)
    spawned = None
    if args.spawn_loopfile:
        spawned = spawn_loopfile(os.path.abspath(args.spawn_loopfile), args.driver_arg)
    try:
        endpoint = spawned.endpoint if spawned else args.endpoint
        base = os.path.abspath(args.spawn_loopfile) if args.spawn_loopfile else tempfile.gettempdir()
        work_dir = args.work_dir or tempfile.mkdtemp(prefix="localcsi-bench-", dir=base)
        opts = Options(endpoint=endpoint, pid=spawned.proc.pid if spawned else args.pid, client=args.client,
                       work_dir=work_dir, bare_dir=args.bare_dir or base, parameters=parameters, args=args)
        report = anyio.run(bench, opts, spawned)
    finally:
        if spawned is not None:
            code = stop(spawned)
            if code not in (0, None):
                print(f"localcsi bench: the spawned driver exited with {code}", file=sys.stderr)
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, sort_keys=False)
            out.write("\n")
    from csi.bench.report import render

    print(render(report))
    if args.plot:
        from csi.bench.plot import draw

        draw(report, args.plot)
        print(f"plot: {args.plot}")
    return 0

