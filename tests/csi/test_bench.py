"""``localcsi bench``: the figures it computes, and one short real run against a spawned driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csi.bench.client import CallFailed
from csi.bench.fio import JOBS, parse_fio
from csi.bench.report import render
from csi.bench.stats import Recorder, Summary, cpu_per_op, percentile, sample_process
from tests.support import loops_backed_by, mounts_under

REPO = Path(__file__).resolve().parents[2]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([], 0.5) == 0
    s = Summary.of([0.001, 0.002, 0.003, 0.004])
    assert (s.count, s.p50_ms, s.max_ms, s.mean_ms) == (4, 2.0, 4.0, 2.5)


@pytest.mark.anyio
async def test_recorder_counts_error_codes_and_keeps_failures_out_of_latencies() -> None:
    rec = Recorder()

    async def ok() -> int:
        return 7

    async def aborted() -> int:
        raise CallFailed("ABORTED", "busy")

    assert await rec.timed("CreateVolume", ok) == 7
    assert await rec.timed("CreateVolume", aborted) is None
    assert await rec.timed("CreateVolume", aborted) is None
    assert rec.ok_count == 1
    assert rec.error_count == 2
    assert rec.error_table() == {"CreateVolume": {"ABORTED": 2}}
    assert rec.summaries()["CreateVolume"]["count"] == 1


def test_sample_process_reads_memory_and_cpu_of_a_pid() -> None:
    before = sample_process(os.getpid())
    sum(i * i for i in range(300_000))
    after = sample_process(os.getpid())
    assert before.rss_bytes > 1 << 20
    assert after.hwm_bytes >= after.rss_bytes
    assert after.cpu_seconds >= before.cpu_seconds
    delta = cpu_per_op(before, after, 10)
    assert delta is not None
    assert delta.cpu_ms_per_op >= 0
    assert cpu_per_op(None, after, 10) is None


def test_parse_fio_json() -> None:
    output = "note: a warning line fio prints first\n" + json.dumps({"jobs": [{
        "read": {"iops": 20000.4, "bw": 80000, "clat_ns": {"percentile": {"50.000000": 500000, "99.000000": 2000000}}},
        "write": {"iops": 0, "bw": 0, "clat_ns": {}},
    }]})
    result = parse_fio(output, JOBS[0])
    assert result["iops"] == 20000
    assert result["mib_per_s"] == 78.1
    assert (result["clat_p50_us"], result["clat_p99_us"]) == (500.0, 2000.0)


def test_report_compares_with_the_targets() -> None:
    report = {
        "endpoint": "unix:///x", "client": "grpcio", "machine": {"cpus": 2, "kernel": "6"},
        "probe": {"latency": {"Probe": {**vars(Summary.of([0.0002] * 10))}}},
        "create_delete": [{"in_flight": 16, "rpcs_per_second": 2500.0, "pairs_per_second": 1250.0,
                           "errors_total": 3, "errors": {"CreateVolume": {"ABORTED": 3}}, "latency": {}}],
        "memory_idle": {"rss_mib": 40.0, "peak_rss_mib": 40.0},
    }
    text = render(report)
    lines = {line.split("  ")[1].strip(): line for line in text.splitlines() if line.startswith("  ") and
             len(line.split("  ")) > 1}
    assert "ok" in lines["Probe p50 (ms)"]
    assert "ok" in lines["Create+Delete RPCs/s, 16 in flight"]
    assert "MISSED" in lines["errors at 16 in flight"]
    assert "MISSED" in lines["RSS idle (MiB)"]


def test_data_path_bounds_follow_the_baseline() -> None:
    """loopfile is held to 0.9 of its backing file; lvm and rawdisk to 0.97 of the raw device."""
    base = {"endpoint": "unix:///x", "client": "grpcio", "machine": {"cpus": 2, "kernel": "6"}}
    ratios = {"randread_4k_iops": 0.95, "randwrite_4k_iops": 0.98}
    loopfile = render({**base, "driver": {"backend": "loopfile"},
                       "fio": {"baseline": "backing file (O_DIRECT)", "ratios": ratios, "results": {}}})
    assert "ok" in _target(loopfile, "loopfile randread 4k IOPS / backing file")
    rawdisk = render({**base, "driver": {"backend": "rawdisk"},
                      "fio": {"baseline": "raw device (O_DIRECT)", "ratios": ratios, "results": {}}})
    assert "MISSED" in _target(rawdisk, "rawdisk randread 4k IOPS / raw device")
    assert "ok" in _target(rawdisk, "rawdisk randwrite 4k IOPS / raw device")


def _target(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(name))


@pytest.mark.root
@pytest.mark.slow
def test_fio_against_a_raw_device_baseline(tmp_path: Path) -> None:
    """--fio-baseline-device: the data path measured on a published block and ext4 volume and on the device."""
    image = tmp_path / "twin.img"
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
    twin = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()
    out = tmp_path / "bench.json"
    try:
        argv = [sys.executable, "-m", "csi.cli", "bench", "--spawn-loopfile", str(tmp_path / "driver"), "--json",
                str(out), "--only", "fio", "--fio", "--fio-runtime", "1", "--fio-size", str(16 << 20),
                "--fio-baseline-device", twin]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
        assert done.returncode == 0, done.stderr[-4000:]
    finally:
        subprocess.run(["losetup", "-d", twin], check=False)
    fio = json.loads(out.read_text())["fio"]
    assert (fio["baseline"], fio["baseline_device"]) == ("raw device (O_DIRECT)", twin)
    assert set(fio["by_target"]) == {"raw device (O_DIRECT)", "driver block volume", "driver ext4 volume (file)"}
    assert all(job["iops"] > 0 for job in fio["by_target"]["raw device (O_DIRECT)"].values())
    assert fio["ratios"]["randread_4k_iops"] > 0
    assert "loopfile randread 4k IOPS / raw device" in done.stdout
    assert loops_backed_by(tmp_path) == []


@pytest.mark.root
@pytest.mark.slow
def test_short_bench_run_against_a_spawned_driver(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    spawn_dir = tmp_path / "driver"
    argv = [sys.executable, "-m", "csi.cli", "bench", "--spawn-loopfile", str(spawn_dir), "--json", str(out),
            "--probe-calls", "50", "--in-flight", "4", "--cd-volumes", "20", "--fs-type", "ext4",
            "--iterations", "1", "--stats-calls", "3", "--pair-calls", "2", "--scale-volumes", "20",
            "--scale-samples", "3", "--volume-size", str(64 << 20)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["startup_seconds"] > 0
    assert report["probe"]["latency"]["Probe"]["count"] == 50
    (cd,) = report["create_delete"]
    assert cd["errors_total"] == 0
    assert cd["latency"]["CreateVolume"]["count"] == 20
    assert cd["latency"]["DeleteVolume"]["count"] == 20
    (prov,) = report["provision"]
    assert prov["errors"] == {}
    for step in ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume",
                 "NodeUnpublishVolume", "NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume"):
        assert prov["latency"][step]["count"] == 1, step
    assert prov["node_calls"]["NodePublish+NodeUnpublish pair"]["count"] == 2
    assert prov["node_calls"]["NodeGetVolumeStats"]["count"] == 3
    (bare,) = report["bare"]
    assert bare["latency"]["up (bare)"]["count"] == 1
    assert report["scale"]["existing"] == 20
    assert report["scale"]["listed"] >= 20
    assert report["scale"]["errors"] == {}
    assert report["memory_after"]["rss_mib"] > 0
    assert prov["driver_cpu"]["cpu_ms_per_op"] > 0
    assert "targets" in done.stdout
    # Everything the run made is gone: no volumes, mounts or loop devices left behind.
    assert list((spawn_dir / "volumes").glob("*.img")) == []
    assert mounts_under(tmp_path) == []
    assert loops_backed_by(tmp_path) == []


def test_bench_needs_exactly_one_target() -> None:
    done = subprocess.run([sys.executable, "-m", "csi.cli", "bench"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "exactly one of --endpoint or --spawn-loopfile" in done.stderr
