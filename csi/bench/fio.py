"""Data path: fio on volumes the driver published, against the backing file itself.

Each target is filled once with sequential writes (so reads hit real blocks,
not unwritten extents that read as zeros for free), then four short,
time-based fio jobs run with direct I/O: 4k random read and write (libaio,
queue depth 32) and 1M sequential read and write (queue depth 8).

Targets: the ceiling, a block volume and an ext4 volume published by the
driver, and optionally bare loop devices with other settings, to show what
each driver-controlled setting buys. The ceiling is the backing file with
``O_DIRECT`` in the driver's image directory (loopfile: its volumes are
direct-I/O loop devices over images on that same filesystem), or a raw
device given by the caller (``baseline_device``): for lvm a device like the
volume group's PV, for rawdisk a disk like the pool's.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import anyio

from backends.system.runner import ProcessRunner
from csi.bench import phases
from csi.bench.stats import Recorder

MIB = 1 << 20


@dataclass(frozen=True)
class Job:
    name: str
    rw: str
    block_size: str
    iodepth: int

    @property
    def random(self) -> bool:
        return self.rw.startswith("rand")


JOBS = (
    Job("randread_4k", "randread", "4k", 32),
    Job("randwrite_4k", "randwrite", "4k", 32),
    Job("read_1m", "read", "1M", 8),
    Job("write_1m", "write", "1M", 8),
)


def fio_argv(filename: str, size: int, *, rw: str, block_size: str, iodepth: int, runtime: int) -> list[str]:
    argv = ["fio", "--name=bench", f"--filename={filename}", "--direct=1", "--ioengine=libaio", f"--rw={rw}",
            f"--bs={block_size}", f"--iodepth={iodepth}", f"--size={size}", "--output-format=json",
            "--randrepeat=0", "--norandommap", "--group_reporting"]
    if runtime:
        argv += [f"--runtime={runtime}", "--time_based"]
    return argv


def parse_fio(output: str, job: Job) -> dict[str, Any]:
    data = json.loads(output[output.index("{"):])
    side = data["jobs"][0]["write" if "write" in job.rw else "read"]
    percentiles = side.get("clat_ns", {}).get("percentile", {})
    p50 = percentiles.get("50.000000", 0) / 1000
    p99 = percentiles.get("99.000000", 0) / 1000
    iops = round(side["iops"], 0)
    mib_s = round(side["bw"] / 1024, 1)
    summary = (f"{iops:>9.0f} IOPS   p50 {p50:>7.0f} µs  p99 {p99:>7.0f} µs" if job.random else
               f"{mib_s:>9.1f} MiB/s  p50 {p50:>7.0f} µs  p99 {p99:>7.0f} µs")
    return {"iops": iops, "mib_per_s": mib_s, "clat_p50_us": round(p50, 1), "clat_p99_us": round(p99, 1),
            "summary": summary}


async def run_jobs(runner: ProcessRunner, filename: str, size: int, runtime: int) -> dict[str, dict[str, Any]]:
    fill = fio_argv(filename, size, rw="write", block_size="1M", iodepth=8, runtime=0)
    await runner.run(fill, timeout=600)  # once, so reads hit written blocks
    results = {}
    for job in JOBS:
        out = await runner.run(fio_argv(filename, size, rw=job.rw, block_size=job.block_size, iodepth=job.iodepth,
                                        runtime=runtime),
                               timeout=runtime * 3 + 120)
        results[job.name] = parse_fio(out.stdout, job)
    return results


async def _backing_file(runner: ProcessRunner, directory: str, size: int, runtime: int) -> dict[str, Any]:
    path = os.path.join(directory, "fio-backing.img")
    await runner.run(["fallocate", "-l", str(size), path], timeout=60)
    try:
        return await run_jobs(runner, path, size, runtime)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _bare_loop(runner: ProcessRunner, directory: str, size: int, runtime: int,
                     losetup_flags: list[str]) -> dict[str, Any]:
    path = os.path.join(directory, "fio-loop.img")
    await runner.run(["fallocate", "-l", str(size), path], timeout=60)
    device = ""
    try:
        device = (await runner.run(["losetup", *losetup_flags, "-f", "--show", path], timeout=60)).stdout.strip()
        return await run_jobs(runner, device, size, runtime)
    finally:
        with anyio.CancelScope(shield=True):
            if device:
                await runner.run(["losetup", "-d", device], timeout=60, check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


async def _driver_volume(target: phases.Target, runner: ProcessRunner, size: int, runtime: int,
                         fs_type: str) -> dict[str, Any]:
    cap = phases.mount_cap(fs_type) if fs_type else phases.block_cap()
    name = target.name(f"fio-{fs_type or 'block'}", 0)
    paths = await anyio.to_thread.run_sync(phases.paths_for, target, name)
    rec = Recorder()
    volume_size = size if not fs_type else max(2 * size, 512 * MIB)
    vid = await phases.bring_up(target, rec, name, size=volume_size, cap=cap, p=paths)
    if vid is None:
        raise RuntimeError(f"could not publish a {fs_type or 'block'} volume for fio: {rec.error_table()}")
    try:
        filename = paths.target if not fs_type else os.path.join(paths.target, "fio.dat")
        return await run_jobs(runner, filename, size, runtime)
    finally:
        with anyio.CancelScope(shield=True):
            await phases.tear_down(target, rec, vid, paths)


def ratios(results: dict[str, dict[str, Any]], over: str, under: str) -> dict[str, float]:
    out = {}
    for job in JOBS:
        a, b = results.get(over, {}).get(job.name), results.get(under, {}).get(job.name)
        if a and b:
            key = "iops" if job.random else "mib_per_s"
            if b[key]:
                out[f"{job.name}_{'iops' if job.random else 'bw'}"] = round(a[key] / b[key], 3)
    return out


BACKING_FILE = "backing file (O_DIRECT)"
RAW_DEVICE = "raw device (O_DIRECT)"


async def data_path(target: phases.Target, directory: str, size: int, runtime: int, variants: bool, *,
                    baseline_device: str = "") -> dict[str, Any]:
    runner = ProcessRunner()
    scratch = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="fio-", dir=directory))
    per_target: dict[str, dict[str, Any]] = {}
    baseline = RAW_DEVICE if baseline_device else BACKING_FILE
    try:
        if baseline_device:
            per_target[baseline] = await run_jobs(runner, baseline_device, size, runtime)
        else:
            per_target[baseline] = await _backing_file(runner, scratch, size, runtime)
        per_target["driver block volume"] = await _driver_volume(target, runner, size, runtime, "")
        per_target["driver ext4 volume (file)"] = await _driver_volume(target, runner, size, runtime, "ext4")
        if variants:
            per_target["bare loop, direct I/O, 4k sectors (as the driver)"] = await _bare_loop(
                runner, scratch, size, runtime, ["--direct-io=on", "--sector-size", "4096"])
            per_target["bare loop, buffered I/O"] = await _bare_loop(runner, scratch, size, runtime,
                                                                     ["--direct-io=off"])
            per_target["bare loop, direct I/O, 512-byte sectors"] = await _bare_loop(runner, scratch, size, runtime,
                                                                                     ["--direct-io=on"])
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(scratch)
    flat = {f"{t}: {job}": res for t, jobs in per_target.items() for job, res in jobs.items()}
    return {
        "size_bytes": size, "runtime_seconds": runtime, "results": flat, "by_target": per_target,
        "baseline": baseline, "baseline_device": baseline_device,
        "ratios": ratios(per_target, "driver block volume", baseline),
        "ratios_ext4": ratios(per_target, "driver ext4 volume (file)", baseline),
    }
