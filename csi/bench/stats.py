"""Benchmark bookkeeping: latency summaries, error counts, and the driver's memory and CPU.

The driver's cost is read from ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) and
``/proc/PID/stat`` (``utime``/``stime``, and ``cutime``/``cstime`` for the
commands it ran and reaped). This is a measuring tool looking at another
process, which is why it reads ``/proc`` outside ``backends/system``.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from csi.bench.client import CallFailed

T = TypeVar("T")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


@dataclass(frozen=True)
class Summary:
    """Latency figures in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Summary:
        values = sorted(seconds)
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ms = [v * 1000 for v in values]
        return cls(
            count=len(ms), p50_ms=round(percentile(ms, 0.5), 3), p90_ms=round(percentile(ms, 0.9), 3),
            p99_ms=round(percentile(ms, 0.99), 3), mean_ms=round(sum(ms) / len(ms), 3), max_ms=round(ms[-1], 3),
        )


@dataclass
class Recorder:
    """Latencies and error codes per operation name."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.latencies.setdefault(name, []).append(seconds)

    def fail(self, name: str, code: str) -> None:
        self.errors.setdefault(name, Counter())[code] += 1

    async def timed(self, name: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run one call, record its latency (success) or its error code (failure: returns None)."""
        started = time.perf_counter()
        try:
            result = await fn()
        except CallFailed as exc:
            self.fail(name, exc.code)
            return None
        self.add(name, time.perf_counter() - started)
        return result

    @property
    def ok_count(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def error_count(self) -> int:
        return sum(sum(c.values()) for c in self.errors.values())

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(Summary.of(values)) for name, values in self.latencies.items()}

    def error_table(self) -> dict[str, dict[str, int]]:
        return {name: dict(codes) for name, codes in self.errors.items()}


@dataclass(frozen=True)
class ProcSample:
    rss_bytes: int
    hwm_bytes: int
    cpu_seconds: float
    children_cpu_seconds: float


def sample_process(pid: int) -> ProcSample:
    """Memory and CPU of ``pid`` now (blocking reads of two small procfs files)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) * 1024
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        after_name = stat.read().rsplit(")", 1)[1].split()
    # Fields after "(comm)": state is [0]; utime, stime, cutime, cstime are fields 14-17 of stat(5).
    utime, stime, cutime, cstime = (int(after_name[i]) for i in (11, 12, 13, 14))
    return ProcSample(
        rss_bytes=fields.get("VmRSS", 0), hwm_bytes=fields.get("VmHWM", 0),
        cpu_seconds=(utime + stime) / CLOCK_TICKS, children_cpu_seconds=(cutime + cstime) / CLOCK_TICKS,
    )


@dataclass(frozen=True)
class CpuDelta:
    cpu_ms_per_op: float
    children_cpu_ms_per_op: float


def cpu_per_op(before: ProcSample | None, after: ProcSample | None, ops: int) -> CpuDelta | None:
    if before is None or after is None or ops <= 0:
        return None
    return CpuDelta(
        cpu_ms_per_op=round((after.cpu_seconds - before.cpu_seconds) * 1000 / ops, 3),
        children_cpu_ms_per_op=round((after.children_cpu_seconds - before.children_cpu_seconds) * 1000 / ops, 3),
    )
