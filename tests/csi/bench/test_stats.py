"""Benchmark bookkeeping (csi/bench/stats.py): percentiles, latency summaries, error counts, memory and CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from csi.bench.client import CallFailed
from csi.bench.stats import CpuDelta, ProcSample, Recorder, Summary, cpu_per_op, percentile, sample_process


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
    spend_cpu(0.2)  # work known to cost CPU: at least 200 ms of this process's own time
    after = sample_process(os.getpid())
    assert before.rss_bytes > 1 << 20
    assert after.hwm_bytes >= after.rss_bytes
    assert after.cpu_seconds - before.cpu_seconds >= 0.15  # clock ticks are 10 ms: no field but CPU time grows so
    delta = cpu_per_op(before, after, 10)
    assert delta is not None
    assert delta.cpu_ms_per_op >= 15.0  # 200 ms of CPU over 10 operations, a tick's rounding aside
    assert cpu_per_op(None, after, 10) is None


def test_the_commands_a_process_ran_count_as_its_childrens_cpu() -> None:
    """``cutime``/``cstime``: what the driver's reaped commands (mkfs, lvcreate) cost, apart from its own time."""
    before = sample_process(os.getpid())
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.2\n"
                    "while time.process_time() < end: pass"], check=True, timeout=60)
    after = sample_process(os.getpid())
    assert after.children_cpu_seconds - before.children_cpu_seconds >= 0.15
    delta = cpu_per_op(before, after, 1)
    assert delta is not None and delta.children_cpu_ms_per_op >= 150.0


def test_cpu_per_op_of_known_samples() -> None:
    before = ProcSample(rss_bytes=0, hwm_bytes=0, cpu_seconds=1.0, children_cpu_seconds=0.5)
    after = ProcSample(rss_bytes=0, hwm_bytes=0, cpu_seconds=1.25, children_cpu_seconds=1.5)
    assert cpu_per_op(before, after, 10) == CpuDelta(cpu_ms_per_op=25.0, children_cpu_ms_per_op=100.0)
    assert cpu_per_op(before, after, 3) == CpuDelta(cpu_ms_per_op=83.333, children_cpu_ms_per_op=333.333)
    assert cpu_per_op(before, after, 0) is None
    assert cpu_per_op(before, None, 10) is None


def spend_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    total = 0
    while time.process_time() < end:
        total += sum(i * i for i in range(10_000))
    assert total > 0
