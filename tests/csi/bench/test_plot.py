"""``bench --plot`` (csi/bench/plot.py): which figures the picture shows, and that it is a PNG."""

from __future__ import annotations

from pathlib import Path

from csi.bench.plot import draw, latencies, throughput
from csi.bench.stats import Summary

REPORT = {
    "endpoint": "unix:///x", "client": "grpclib", "machine": {"cpus": 2}, "driver": {"name": "d", "version": "1"},
    "probe": {"latency": {"Probe": vars(Summary.of([0.001, 0.002, 0.004]))}},
    "create_delete": [{"in_flight": 16, "rpcs_per_second": 250.0,
                       "latency": {"CreateVolume": vars(Summary.of([0.01, 0.02])), "DeleteVolume": {"count": 0}}}],
    "provision": [{"fs_type": "ext4", "latency": {"up (create → publish)": vars(Summary.of([0.09]))},
                   "node_calls": {"NodeGetVolumeStats": vars(Summary.of([0.006]))}}],
}


def test_every_measured_operation_is_a_bar_and_unmeasured_ones_are_not() -> None:
    rows = latencies(REPORT)
    assert [label for label, _, _ in rows] == ["probe: Probe", "create-delete ×16: CreateVolume",
                                               "provision ext4: up (create → publish)",
                                               "provision ext4: NodeGetVolumeStats"]
    assert all(0 < p50 <= p99 for _, p50, p99 in rows)
    assert rows[0][1] == Summary.of([0.001, 0.002, 0.004]).p50_ms
    assert throughput(REPORT) == [("16 in flight", 250.0)]


def test_the_picture_is_a_png(tmp_path: Path) -> None:
    draw(REPORT, str(tmp_path / "bench.png"))
    data = (tmp_path / "bench.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
