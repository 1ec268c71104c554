"""The benchmark report (csi/bench/report.py): the table and each figure against its target."""

from __future__ import annotations

from csi.bench.report import render
from csi.bench.stats import Summary


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
    assert "meets it" in lines["Probe p50 (ms)"]
    assert "meets it" in lines["Create+Delete RPCs/s, 16 in flight"]
    assert "short of it" in lines["errors at 16 in flight"]
    assert "short of it" in lines["RSS idle (MiB)"]
    # Reference figures, said to be such: nothing in the table reads as a failed check.
    assert "MISSED" not in text and "informational" in text and "csi-driver-host-path v1.18" in text


def test_data_path_bounds_follow_the_baseline() -> None:
    """loopfile is held to 0.9 of its backing file; lvm and rawdisk to 0.97 of the raw device."""
    base = {"endpoint": "unix:///x", "client": "grpcio", "machine": {"cpus": 2, "kernel": "6"}}
    ratios = {"randread_4k_iops": 0.95, "randwrite_4k_iops": 0.98}
    loopfile = render({**base, "driver": {"backend": "loopfile"},
                       "fio": {"baseline": "backing file (O_DIRECT)", "ratios": ratios, "results": {}}})
    assert "meets it" in _target(loopfile, "loopfile randread 4k IOPS / backing file")
    rawdisk = render({**base, "driver": {"backend": "rawdisk"},
                      "fio": {"baseline": "raw device (O_DIRECT)", "ratios": ratios, "results": {}}})
    assert "short of it" in _target(rawdisk, "rawdisk randread 4k IOPS / raw device")
    assert "meets it" in _target(rawdisk, "rawdisk randwrite 4k IOPS / raw device")


def _target(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(name))
