"""``localcsi bench --plot FILE.png``: the report's latencies and throughput as one picture.

Two panels: every measured operation's p50 and p99 latency (log scale, one bar pair per operation, grouped by
phase), and the throughput of each Create+Delete level. matplotlib is an optional extra (``localcsi[plot]``),
imported only here and only when a plot is asked for; it draws off-screen (the Agg backend), so no display is
needed.
"""

from __future__ import annotations

from typing import Any


def latencies(report: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(label, p50 ms, p99 ms) of every operation the report measured, phase by phase."""
    rows: list[tuple[str, float, float]] = []

    def add(phase: str, table: dict[str, dict[str, Any]]) -> None:
        for name, summary in table.items():
            if summary.get("count"):
                rows.append((f"{phase}: {name}", float(summary["p50_ms"]), float(summary["p99_ms"])))

    if "probe" in report:
        add("probe", report["probe"]["latency"])
    for cd in report.get("create_delete", []):
        add(f"create-delete ×{cd['in_flight']}", cd["latency"])
    for prov in report.get("provision", []):
        add(f"provision {prov['fs_type']}", {**prov["latency"], **prov["node_calls"]})
    for bare in report.get("bare", []):
        add(f"bare {bare['fs_type']}", bare["latency"])
    scale = report.get("scale")
    if scale:
        add(f"scale {scale['existing']}", {"CreateVolume at 0": scale["create_at_0"],
                                           f"CreateVolume at {scale['existing']}": scale["create_at_existing"],
                                           **scale["latency"]})
    return rows


def throughput(report: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, RPCs per second) of each Create+Delete level."""
    return [(f"{cd['in_flight']} in flight", float(cd["rpcs_per_second"])) for cd in report.get("create_delete", [])]


def draw(report: dict[str, Any], path: str) -> None:
    """Write the picture of ``report`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, rates = latencies(report), throughput(report)
    height = max(4.0, 0.28 * len(rows) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, height), gridspec_kw={"width_ratios": [3, 1]})
    positions = list(range(len(rows)))
    left.barh([p + 0.2 for p in positions], [r[2] for r in rows], height=0.4, label="p99", color="#d98c3f")
    left.barh([p - 0.2 for p in positions], [r[1] for r in rows], height=0.4, label="p50", color="#3f7fd9")
    left.set_yticks(positions, [r[0] for r in rows], fontsize=7)
    left.invert_yaxis()
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.legend(loc="lower right")
    left.set_title("latency per operation")
    right.bar([r[0] for r in rates], [r[1] for r in rates], color="#5aa05a")
    right.set_ylabel("RPCs per second")
    right.set_title("Create+Delete throughput")
    driver = report.get("driver", {})
    fig.suptitle(f"localcsi bench: {driver.get('name', '?')} {driver.get('version', '')} at {report['endpoint']} "
                 f"({report['client']} client, {report['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
