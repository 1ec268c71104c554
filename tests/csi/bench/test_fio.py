"""fio for the data path (csi/bench/fio.py): the jobs' command lines, their JSON, and the ratios."""

from __future__ import annotations

import json

from csi.bench.fio import JOBS, fio_argv, parse_fio, ratios


def test_parse_fio_json() -> None:
    output = "note: a warning line fio prints first\n" + json.dumps({"jobs": [{
        "read": {"iops": 20000.4, "bw": 80000, "clat_ns": {"percentile": {"50.000000": 500000, "99.000000": 2000000}}},
        "write": {"iops": 0, "bw": 0, "clat_ns": {}},
    }]})
    result = parse_fio(output, JOBS[0])
    assert result["iops"] == 20000
    assert result["mib_per_s"] == 78.1
    assert (result["clat_p50_us"], result["clat_p99_us"]) == (500.0, 2000.0)


def test_every_job_runs_with_direct_io_and_a_json_report() -> None:
    assert [(j.name, j.random) for j in JOBS] == [("randread_4k", True), ("randwrite_4k", True),
                                                  ("read_1m", False), ("write_1m", False)]
    argv = fio_argv("/dev/loop7", 16 << 20, rw="randread", block_size="4k", iodepth=32, runtime=5)
    assert argv[0] == "fio" and {"--direct=1", "--ioengine=libaio", "--output-format=json"} <= set(argv)
    assert {"--filename=/dev/loop7", "--rw=randread", "--bs=4k", "--iodepth=32", f"--size={16 << 20}"} <= set(argv)
    assert argv[-2:] == ["--runtime=5", "--time_based"]
    assert not any(a.startswith("--runtime") for a in fio_argv("/f", 1, rw="write", block_size="1M", iodepth=8,
                                                                 runtime=0))  # the fill writes once through


def test_ratios_compare_iops_for_random_jobs_and_bandwidth_for_sequential_ones() -> None:
    def result(iops: float, mib: float) -> dict[str, float]:
        return {"iops": iops, "mib_per_s": mib}

    driver = {"randread_4k": result(900, 3.5), "read_1m": result(100, 450.0), "write_1m": result(50, 0)}
    ceiling = {"randread_4k": result(1000, 4.0), "read_1m": result(90, 500.0), "write_1m": result(60, 300.0)}
    assert ratios({"driver": driver, "ceiling": ceiling}, "driver", "ceiling") == {
        "randread_4k_iops": 0.9, "read_1m_bw": 0.9, "write_1m_bw": 0.0}
    assert ratios({"driver": driver}, "driver", "ceiling") == {}  # nothing to compare with
    assert ratios({"driver": ceiling, "ceiling": {"read_1m": result(0, 0)}}, "driver", "ceiling") == {}
