"""The benchmark report as a readable table, and how it compares with the reference targets (informational)."""

from __future__ import annotations

from typing import Any

from csi.bench.fio import RAW_DEVICE

#: csi-driver-host-path v1.18 on this machine (kind, Python grpcio client); see docs/benchmarks.md.
REFERENCE = {
    "probe_p50_ms": 0.18,
    "create_delete_dir_ops": 1950.0,
    "create_delete_block_ops": 213.0,
    "publish_pair_p50_ms": 16.5,
    "rss_idle_mib": 15.0,
    "rss_loaded_mib": 21.0,
}


def _ms(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f}"


def _latency_rows(title: str, latency: dict[str, dict[str, Any]]) -> list[str]:
    rows = [f"  {title}"]
    for name, summary in latency.items():
        rows.append(f"    {name:<40} {summary['count']:>6}  {_ms(summary):>20}")
    return rows


def _cpu(section: dict[str, Any]) -> str:
    cpu = section.get("driver_cpu")
    if not cpu:
        return ""
    return f"  (driver CPU {cpu['cpu_ms_per_op']:.3f} ms/op, its commands {cpu['children_cpu_ms_per_op']:.3f} ms/op)"


def _targets(report: dict[str, Any]) -> list[str]:
    """One line per target: measured, the bound, pass or miss."""
    out: list[str] = []

    def line(what: str, value: float | None, bound: float, higher_is_better: bool) -> None:
        if value is None:
            return
        ok = value >= bound if higher_is_better else value <= bound
        sign = "≥" if higher_is_better else "≤"
        out.append(f"  {what:<52} {value:>10.2f}  {sign} {bound:<10.2f} {'meets it' if ok else 'short of it'}")

    probe = report.get("probe", {}).get("latency", {}).get("Probe")
    line("Probe p50 (ms)", probe["p50_ms"] if probe else None, REFERENCE["probe_p50_ms"] * 1.5, False)
    for cd in report.get("create_delete", []):
        if cd["in_flight"] == 16:
            bound = max(REFERENCE["create_delete_dir_ops"], 5 * REFERENCE["create_delete_block_ops"])
            line("Create+Delete RPCs/s, 16 in flight", cd["rpcs_per_second"], bound, True)
        line(f"errors at {cd['in_flight']} in flight", cd["errors_total"], 0, False)
    bare = {b["fs_type"]: b for b in report.get("bare", [])}
    for prov in report.get("provision", []):
        up = prov["latency"].get("up (create → publish)")
        b = bare.get(prov["fs_type"], {}).get("latency", {}).get("up (bare)")
        if up and b and b["p50_ms"]:
            line(f"provisioning path / bare commands ({prov['fs_type']}, p50)", up["p50_ms"] / b["p50_ms"], 1.25,
                 False)
        pair = prov["node_calls"].get("NodePublish+NodeUnpublish pair")
        line(f"NodePublish+NodeUnpublish pair p50 ({prov['fs_type']}, ms)", pair["p50_ms"] if pair else None,
             REFERENCE["publish_pair_p50_ms"] * 0.5, False)
    scale = report.get("scale")
    if scale and scale.get("create_p50_ratio") is not None:
        line(f"CreateVolume p50 at {scale['existing']} / at 0 volumes", scale["create_p50_ratio"], 1.25, False)
    pools = report.get("pools")
    if pools and pools.get("ratio") is not None:
        line(f"CreateVolume p50, {pools['pools']} pools / one pool", pools["ratio"], 1.05, False)
    for key, ref in (("memory_idle", "rss_idle_mib"), ("memory_after", "rss_loaded_mib")):
        mem = report.get(key)
        if mem:
            line(f"RSS {key.split('_')[1]} (MiB)", mem["rss_mib"], REFERENCE[ref] * 2, False)
    fio = report.get("fio", {})
    ratio = fio.get("ratios", {})
    if "randread_4k_iops" in ratio:
        # The bounds (docs/benchmarks.md): loopfile 0.9 of its backing file, lvm and rawdisk 0.97 of the raw device.
        raw = fio.get("baseline") == RAW_DEVICE
        backend = report.get("driver", {}).get("backend") or ("device-backed" if raw else "loopfile")
        under, bound = ("raw device", 0.97) if raw else ("backing file", 0.9)
        for job in ("randread_4k", "randwrite_4k"):
            line(f"{backend} {job.replace('_', ' ')} IOPS / {under}", ratio[f"{job}_iops"], bound, True)
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"localcsi bench — {report.get('driver', {}).get('name', '?')} at {report['endpoint']} "
             f"({report['client']} client; {report['machine']['cpus']} CPUs, kernel {report['machine']['kernel']})"]
    if report.get("load_average"):
        lines.append("  load average (1 min) at the end of each phase: "
                     + ", ".join(f"{phase} {load:.1f}" for phase, load in report["load_average"].items()))
    if "startup_seconds" in report:
        lines.append(f"  start-up to first ready Probe: {report['startup_seconds'] * 1000:.0f} ms")
    lines.append(f"  {'operation':<42} {'count':>6}  {'p50 / p99 ms':>20}")
    if "probe" in report:
        lines += _latency_rows("Probe (sequential)" + _cpu(report["probe"]), report["probe"]["latency"])
    for cd in report.get("create_delete", []):
        lines += _latency_rows(
            f"Create+Delete, {cd['in_flight']} in flight: {cd['rpcs_per_second']:.0f} RPCs/s "
            f"({cd['pairs_per_second']:.0f} pairs/s), errors {cd['errors_total']} {cd['errors'] or ''}" + _cpu(cd),
            cd["latency"])
    for prov in report.get("provision", []):
        lines += _latency_rows(f"provisioning path, {prov['fs_type']}, {prov['iterations']}×" + _cpu(prov),
                               {**prov["latency"], **prov["node_calls"]})
        if prov["errors"]:
            lines.append(f"    errors: {prov['errors']}")
    for bare in report.get("bare", []):
        lines += _latency_rows(f"bare commands, {bare['fs_type']}, {bare['iterations']}×", bare["latency"])
    scale = report.get("scale")
    if scale:
        lines += _latency_rows(
            f"scale: {scale['existing']} volumes (filled at {scale['fill_rpcs_per_second']:.0f}/s), "
            f"errors {scale['errors'] or 0}",
            {"CreateVolume at 0": scale["create_at_0"], f"CreateVolume at {scale['existing']}":
             scale["create_at_existing"], **scale["latency"]})
    pools = report.get("pools")
    if pools:
        lines.append(f"  pools: CreateVolume p50 (median of {pools['rounds']} alternating rounds of "
                     f"{pools['volumes_per_round']}, 16 in flight): one pool {pools['one_pool_p50_ms']:.2f} ms, "
                     f"{pools['pools']} pools {pools['pools_p50_ms']:.2f} ms")
    fio = report.get("fio")
    if fio:
        lines.append("  fio (IOPS or MiB/s; p50/p99 completion latency µs)")
        for name, job in fio["results"].items():
            lines.append(f"    {name:<44} {job['summary']}")
    for key in ("memory_idle", "memory_after"):
        mem = report.get(key)
        if mem:
            when = key.split("_")[1]
            lines.append(f"  driver memory {when}: RSS {mem['rss_mib']} MiB, peak {mem['peak_rss_mib']} MiB")
    targets = _targets(report)
    if targets:
        lines.append("  against the reference targets (figures of csi-driver-host-path v1.18 measured on the reference "
                     "machine, docs/benchmarks.md; informational: they depend on this machine, and the exit status "
                     "does not)")
        lines += targets
    return "\n".join(lines)
