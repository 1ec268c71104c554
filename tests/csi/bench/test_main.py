"""``localcsi bench`` (csi/bench/main.py): short real runs against a spawned driver, and its one-target rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csi.bench.main import NORMAL, POOL_ROUNDS, QUICK, Options, bench, memory, settle
from csi.bench.report import render
from csi.bench.stats import ProcSample
from csi.cli.main import build_parser
from e2e.leaks import loops_backed_under, mounts_under
from tests.csi.scripted import DRIVER, NODE, ScriptedBackend, serving
from tests.support import DriverProcess

REPO = Path(__file__).resolve().parents[3]


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
    assert loops_backed_under(tmp_path) == []


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
    assert loops_backed_under(tmp_path) == []


def test_bench_needs_exactly_one_target() -> None:
    done = subprocess.run([sys.executable, "-m", "csi.cli", "bench"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "exactly one of --endpoint or --spawn-loopfile" in done.stderr


def bench_options(endpoint: str, work_dir: Path, *argv: str) -> Options:
    args = build_parser().parse_args(["bench", "--endpoint", endpoint, "--client", "grpclib", *argv])
    return Options(endpoint=endpoint, pid=os.getpid(), client="grpclib", work_dir=str(work_dir),
                   bare_dir=str(work_dir), parameters={}, args=args)


def test_quick_fills_what_was_not_given_and_keeps_what_was(tmp_path: Path) -> None:
    quick = settle(bench_options("unix:///x", tmp_path, "--quick", "--probe-calls", "50").args)
    assert (quick.probe_calls, quick.cd_volumes, quick.iterations, quick.in_flight, quick.fs_type) == (
        50, QUICK["cd_volumes"], QUICK["iterations"], [16], ["ext4"])
    full = settle(bench_options("unix:///x", tmp_path, "--iterations", "3").args)
    assert (full.probe_calls, full.iterations, full.in_flight) == (NORMAL["probe_calls"], 3, [])
    assert not quick.fio and not full.fio  # fio only when asked for


def test_only_names_the_phases_that_run(tmp_path: Path) -> None:
    chosen = bench_options("unix:///x", tmp_path, "--only", "probe", "--only", "scale")
    assert [p for p in ("probe", "create-delete", "provision", "bare", "scale", "fio") if chosen.wants(p)] == [
        "probe", "scale"]
    assert all(bench_options("unix:///x", tmp_path).wants(p) for p in ("probe", "provision", "fio"))


def test_memory_figures_are_in_mib() -> None:
    assert memory(ProcSample(10 << 20, 25 << 19, 0.0, 0.0)) == {"rss_mib": 10.0, "peak_rss_mib": 12.5}
    assert memory(None) is None


@pytest.mark.anyio
async def test_a_run_against_an_endpoint_reports_the_driver_the_target_and_each_phase(tmp_path: Path) -> None:
    """The control-plane phases against the real servicers over a scripted backend (no root, no storage)."""
    backend = ScriptedBackend()
    async with serving(tmp_path / "csi.sock", backend) as endpoint:
        report = await bench(bench_options(endpoint, tmp_path, "--only", "probe", "--only", "create-delete",
                                           "--only", "scale", "--probe-calls", "20", "--in-flight", "3",
                                           "--cd-volumes", "12", "--scale-volumes", "9", "--scale-samples", "2"),
                             None)
    assert report["driver"] == {"name": DRIVER, "version": "0.1.0", "backend": "loopfile", "mode": "all",
                                "pools": "default=loopfile"}
    assert report["target"] == {"node_id": NODE, "controller_publish": True, "node_stage": True}
    assert report["probe"]["latency"]["Probe"]["count"] == 20
    (cd,) = report["create_delete"]
    assert (cd["in_flight"], cd["errors_total"], cd["latency"]["CreateVolume"]["count"]) == (3, 0, 12)
    assert (report["scale"]["existing"], report["scale"]["errors"]) == (9, {})
    assert report["memory_idle"]["rss_mib"] > 0 and report["memory_after"]["peak_rss_mib"] > 0
    assert set(report["load_average"]) == {"start", "probe", "create_delete", "scale"}
    assert "provision" not in report and "bare" not in report and backend.volumes == {}
    assert "targets" in render(report)


# ``localcsi bench`` from ``pip install .`` (no dev extra, so no grpcio): the default client is grpclib, and grpcio
# is used only when asked for, with a one-line refusal where it is missing. grpcio is hidden from the child
# process (``sys.modules['grpc'] = None`` makes every import of it fail), as in a plain install.
WITHOUT_GRPCIO = "import sys; sys.modules['grpc'] = None; from csi.cli.main import main; sys.exit(main(sys.argv[1:]))"


def bench_without_grpcio(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_GRPCIO, "bench", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.root
def test_bench_runs_without_grpcio(driver: DriverProcess) -> None:
    done = bench_without_grpcio("--endpoint", driver.endpoint, "--only", "probe", "--probe-calls", "20")
    assert done.returncode == 0, done.stderr
    assert "grpclib client" in done.stdout
    assert "Probe (sequential)" in done.stdout


def test_grpcio_only_when_asked_for_and_then_said_plainly() -> None:
    done = bench_without_grpcio("--endpoint", "unix:///nonexistent.sock", "--client", "grpcio", "--only", "probe")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--client grpcio needs grpcio" in done.stderr


@pytest.mark.root
def test_quick_runs_every_phase_but_fio_says_its_progress_and_draws_the_plot(driver: DriverProcess,
                                                                              tmp_path: Path) -> None:
    picture, figures = tmp_path / "bench.png", tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "csi.cli", "bench", "--endpoint", driver.endpoint, "--quick",
                           "--bare-dir", str(tmp_path), "--plot", str(picture), "--json", str(figures)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(figures.read_text())
    assert {"probe", "create_delete", "provision", "bare", "scale"} <= set(report) and "fio" not in report
    assert report["probe"]["latency"]["Probe"]["count"] == QUICK["probe_calls"]
    progress = [line for line in done.stderr.splitlines() if line.startswith("bench [")]
    assert any(line.endswith("probe ...") for line in progress)
    assert any("scale, 50 volumes done in" in line for line in progress)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    assert f"plot: {picture}" in done.stdout


def test_plot_without_matplotlib_is_refused_in_one_line(tmp_path: Path) -> None:
    hidden = WITHOUT_GRPCIO.replace("sys.modules['grpc'] = None", "sys.modules['matplotlib'] = None")
    done = subprocess.run([sys.executable, "-c", hidden, "bench", "--endpoint", "unix:///nonexistent.sock",
                           "--plot", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--plot needs matplotlib" in done.stderr


@pytest.mark.root
def test_compare_pools_measures_a_driver_of_n_pools_beside_the_one_pool_driver(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "csi.cli", "bench", "--spawn-loopfile", str(tmp_path / "d"),
                           "--compare-pools", "3", "--only", "probe", "--probe-calls", "10", "--cd-volumes", "20",
                           "--no-progress", "--json", str(figures)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    pools = json.loads(figures.read_text())["pools"]
    assert pools["pools"] == 3 and [len(v) for v in pools["round_p50_ms"].values()] == [POOL_ROUNDS] * 2
    assert pools["ratio"] == round(pools["pools_p50_ms"] / pools["one_pool_p50_ms"], 3)
    assert "CreateVolume p50, 3 pools / one pool" in done.stdout
    # A pool directory each, the volumes made in the last pool and all deleted again.
    pools_dir = tmp_path / "d" / "bench-pools"
    assert sorted(p.name for p in pools_dir.iterdir() if p.is_dir()) == ["p0", "p1", "p2"]
    assert [list((pools_dir / p).glob("*.img")) for p in ("p0", "p1", "p2")] == [[], [], []]
    assert "CreateVolume OK" in (pools_dir / "driver.log").read_text()
    refused = subprocess.run([sys.executable, "-m", "csi.cli", "bench", "--endpoint", "unix:///x.sock",
                              "--compare-pools", "3"], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "--compare-pools N needs --spawn-loopfile" in refused.stderr
