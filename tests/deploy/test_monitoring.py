"""deploy/monitoring: the Grafana dashboard queries only metrics and labels the driver exports, and the
PodMonitor scrapes the port the node driver serves them on.

The driver's metric names come from the driver itself (the ``driver_metrics`` fixture, conftest.py: its
registry built in this process and its exposition parsed back), so a renamed or dropped metric fails here rather
than on a blank panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()
DASHBOARD = ROOT / "deploy/monitoring/localcsi-dashboard.json"
EXAMPLE = "deploy/examples/loopfile-monitoring"
#: Labels Prometheus puts on every scraped series: the target's, and the PodMonitor's relabeling (`node`).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "node"}
METRIC = re.compile(r"\blocalcsi_[a-zA-Z0-9_]+\b")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def expressions(board: Mapping[str, Any]) -> Iterator[str]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"]


def test_the_driver_registry_exports_the_families_the_dashboard_is_about(driver_metrics: dict[str, set[str]]) -> None:
    assert {"localcsi_rpc_total", "localcsi_rpc_duration_seconds_bucket", "localcsi_volumes"} <= set(driver_metrics)
    assert driver_metrics["localcsi_rpc_total"] == {"rpc", "code"}


def test_dashboard_has_the_grafana_dashboard_shape() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] == "localcsi"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[0] == "datasource" and board["templating"]["list"][0]["query"] == "prometheus"
    for panel in panels(board):
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids))


def test_every_metric_the_dashboard_queries_exists_in_the_driver(driver_metrics: dict[str, set[str]]) -> None:
    for expr in expressions(dashboard()):
        queried = set(METRIC.findall(expr))
        assert queried, f"queries no localcsi metric: {expr}"
        assert queried <= set(driver_metrics), f"{sorted(queried - set(driver_metrics))} not exported: {expr}"


def test_every_label_the_dashboard_uses_exists_on_its_metrics(driver_metrics: dict[str, set[str]]) -> None:
    for expr in expressions(dashboard()):
        known = TARGET_LABELS.union(*(driver_metrics[m] for m in METRIC.findall(expr)))
        used = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        used |= set(MATCHER.findall(expr))
        assert used <= known, f"{sorted(used - known)} is no label of {sorted(set(METRIC.findall(expr)))}: {expr}"


def test_dashboard_covers_capacity_volumes_calls_and_devices() -> None:
    queried = {m for expr in expressions(dashboard()) for m in METRIC.findall(expr)}
    assert {
        "localcsi_capacity_available_bytes",
        "localcsi_capacity_maximum_volume_bytes",
        "localcsi_volumes",
        "localcsi_rpc_total",
        "localcsi_rpc_duration_seconds_bucket",
        "localcsi_loop_devices_attached",
        "localcsi_backend_up",
    } <= queried
    exprs = list(expressions(dashboard()))
    assert any('code!="OK"' in e and " / " in e for e in exprs), "an error ratio by method"
    assert any('condition="abnormal"' in e for e in exprs), "abnormal volumes"
    assert any("sum by (rpc, code)" in e for e in exprs), "call rate by method and code"


def test_a_misspelt_metric_would_be_caught(driver_metrics: dict[str, set[str]]) -> None:
    assert "localcsi_rpc_calls_total" not in driver_metrics
    assert "localcsi_capacity_bytes" not in driver_metrics


def rendered_example() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = cm.render(cm.Target(ROOT / EXAMPLE))
    return docs


def test_podmonitor_validates_against_its_schema() -> None:
    docs = rendered_example()
    podmonitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert cm.schema_errors(podmonitor) == []
    broken = json.loads(json.dumps(podmonitor))
    broken["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    errors = cm.schema_errors(broken)
    assert any("intervall" in e for e in errors)
    assert any("30 seconds" in e for e in errors)


def test_podmonitor_selects_the_node_pods_and_the_port_serving_metrics() -> None:
    docs = rendered_example()
    podmonitor = next(d for d in docs if d["kind"] == "PodMonitor")
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert podmonitor["metadata"]["namespace"] == daemonset["metadata"]["namespace"] == "localcsi"
    selector = podmonitor["spec"]["selector"]["matchLabels"]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert not selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    node = next(c for c in cm.driver_containers(docs) if c.flag("mode") == "all")
    ports = {p["name"]: p["containerPort"] for p in node.spec["ports"]}
    address = node.flag("metrics-address")
    assert address is not None, "the node driver must serve metrics (--metrics-address)"
    for endpoint in podmonitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["path"] == "/metrics"
        assert ports[endpoint["port"]] == int(address.rsplit(":", 1)[1])
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} in (
            endpoint["relabelings"]
        )


def test_the_dashboard_ships_in_a_configmap_for_grafanas_sidecar() -> None:
    docs = rendered_example()
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "localcsi-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["localcsi-dashboard.json"]) == dashboard()
