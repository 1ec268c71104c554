"""Offline checks of deploy/: every overlay renders, validates and is internally consistent.

The checks live in hack/check-manifests (so they also run by hand); these tests
run them in CI and prove, by breaking rendered objects on purpose, that each
check catches what it claims to.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends.pools import POOL_PARAMETER
from csi.cli.poolfile import pools_from
from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()
TARGETS = cm.discover_targets()


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(cm.render(cm.Target(ROOT / name)))


def fresh(name: str = "deploy/overlays/loopfile") -> list[dict[str, Any]]:
    """A private deep copy of a rendered target, safe to break."""
    return copy.deepcopy(list(rendered(name)))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    pod = find(docs, kind)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == name)


def consistency(docs: list[dict[str, Any]], backend: str = "loopfile") -> list[str]:
    errors: list[str] = cm.consistency_errors(docs, backend, cm.kubelet_dir_of(docs))
    return errors


def test_every_backend_has_an_overlay_and_pools_one_more() -> None:
    overlays = {t.path.name for t in TARGETS if t.path.parent == ROOT / "deploy/overlays"}
    assert overlays == {*cm.BACKENDS, "multi"}


def test_the_pools_overlay_gives_both_instances_its_pools_file_and_a_class_per_pool() -> None:
    """deploy/overlays/multi: the ConfigMap's pools file is one the driver accepts; the node and controller
    instances read it where it is mounted; each pool has its StorageClass, and nothing else names a backend."""
    docs = rendered("deploy/overlays/multi")
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "localcsi-pools"]
    pools = pools_from(yaml.safe_load(config["data"]["pools.yaml"]), "localcsi-pools")
    classes = {d["parameters"].get(POOL_PARAMETER) for d in docs if d["kind"] == "StorageClass"}
    assert classes == {p.name for p in pools}
    for c in cm.driver_containers(docs):
        assert c.flag("config") == "/etc/localcsi/pools.yaml" and c.flag("backend") is None
        mount = next(m for m in c.spec["volumeMounts"] if m["mountPath"] == "/etc/localcsi")
        volume = next(v for v in c.pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == "localcsi-pools"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_target_renders_the_whole_driver(target: Any) -> None:
    kinds = {d["kind"] for d in rendered(target.name)}
    assert {"CSIDriver", "DaemonSet", "Deployment", "StorageClass", "ServiceAccount", "ClusterRole"} <= kinds
    assert all(
        d["metadata"].get("namespace") == "localcsi"
        for d in rendered(target.name)
        if d["kind"] in ("DaemonSet", "Deployment", "ServiceAccount", "Role", "RoleBinding")
    )


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_target_validates_against_the_api_schemas(target: Any) -> None:
    assert [e for d in rendered(target.name) for e in cm.schema_errors(d)] == []


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_target_is_consistent(target: Any) -> None:
    docs = list(rendered(target.name))
    assert cm.consistency_errors(docs, target.backend, cm.kubelet_dir_of(docs)) == []


def test_snapshot_classes_only_where_the_backend_has_snapshots() -> None:
    assert any(d["kind"] == "VolumeSnapshotClass" for d in rendered("deploy/overlays/loopfile"))
    assert any(d["kind"] == "VolumeSnapshotClass" for d in rendered("deploy/overlays/lvm"))
    raw = fresh("deploy/overlays/rawdisk")
    assert not any(d["kind"] == "VolumeSnapshotClass" for d in raw)
    node_containers = find(raw, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert "csi-snapshotter" not in [c["name"] for c in node_containers]


@pytest.mark.parametrize(
    ("example", "kubelet_dir"),
    [
        ("deploy/examples/loopfile-k0s", "/var/lib/k0s/kubelet"),
        ("deploy/examples/lvm-microk8s", "/var/snap/microk8s/common/var/lib/kubelet"),
    ],
)
def test_kubelet_dir_components_move_every_kubelet_path(example: str, kubelet_dir: str) -> None:
    docs = list(rendered(example))
    text = repr(find(docs, "DaemonSet"))
    assert "/var/lib/kubelet" not in text.replace(kubelet_dir, "")
    assert cm.check_kubelet_paths(docs, kubelet_dir) == []
    assert cm.check_kubelet_paths(docs, "/var/lib/kubelet") != []


# --- the schema checks catch what they claim to -------------------------------------------------


def test_schema_rejects_unknown_fields() -> None:
    ds = find(fresh(), "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["mountPropagaton"] = "Bidirectional"
    errors = cm.schema_errors(ds)
    assert errors and "mountPropagaton" in errors[0]


def test_schema_rejects_wrong_types() -> None:
    deployment = find(fresh(), "Deployment")
    deployment["spec"]["replicas"] = "1"
    assert any("'1' is not of type" in e for e in cm.schema_errors(deployment))


def test_schema_checks_the_snapshot_class_crd() -> None:
    vsc = find(fresh(), "VolumeSnapshotClass")
    assert cm.schema_errors(vsc) == []
    vsc["deletionPolicy"] = "Keep"
    vsc["parameter"] = {}
    errors = cm.schema_errors(vsc)
    assert any("deletionPolicy" in e for e in errors)
    assert any("parameter" in e for e in errors)


def test_schema_rejects_kinds_it_has_no_schema_for() -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in cm.schema_errors(unknown)[0]


# --- the cross-checks catch what they claim to --------------------------------------------------


def test_driver_name_mismatch_is_caught() -> None:
    docs = fresh()
    find(docs, "StorageClass")["provisioner"] = "localcsi.example"
    assert any("provisioner" in e for e in consistency(docs))


def test_sidecar_dialing_another_socket_is_caught() -> None:
    docs = fresh()
    container(docs, "DaemonSet", "csi-provisioner")["args"][0] = "--csi-address=/csi/other.sock"
    assert any("csi-provisioner" in e and "--csi-address" in e for e in consistency(docs))


def test_registration_path_outside_the_kubelet_dir_is_caught() -> None:
    docs = fresh()
    registrar = container(docs, "DaemonSet", "node-driver-registrar")
    registrar["args"][1] = "--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/localcsi.dev/csi.sock"
    assert any("registrar" in e for e in consistency(docs))


def test_kubelet_dir_without_bidirectional_propagation_is_caught() -> None:
    docs = fresh()
    for mount in container(docs, "DaemonSet", "localcsi")["volumeMounts"]:
        mount.pop("mountPropagation", None)
    assert any("Bidirectional" in e for e in consistency(docs))


def test_wrong_topology_key_is_caught() -> None:
    docs = fresh()
    find(docs, "StorageClass")["allowedTopologies"] = [
        {"matchLabelExpressions": [{"key": "topology.localcsi.dev/host", "values": ["n1"]}]}
    ]
    assert any("topology.localcsi.dev/host" in e for e in consistency(docs))


def test_unpinned_sidecar_is_caught() -> None:
    docs = fresh()
    container(docs, "Deployment", "csi-attacher")["image"] = "registry.k8s.io/sig-storage/csi-attacher:latest"
    assert any("csi-attacher" in e and "pinned" in e for e in consistency(docs))


def test_host_access_in_the_controller_is_caught() -> None:
    docs = fresh()
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "dev", "hostPath": {"path": "/dev"}})
    assert any("no host access" in e for e in consistency(docs))


def test_backend_disagreement_is_caught() -> None:
    docs = fresh()
    args = container(docs, "Deployment", "localcsi")["args"]
    args[args.index("--backend=loopfile")] = "--backend=lvm"
    assert any("--backend" in e for e in consistency(docs))


def test_provisioner_without_node_deployment_is_caught() -> None:
    docs = fresh()
    container(docs, "DaemonSet", "csi-provisioner")["args"].remove("--node-deployment")
    assert any("node-deployment" in e for e in consistency(docs))


def test_snapshot_class_without_snapshotter_is_caught() -> None:
    docs = fresh()
    pod = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    pod["containers"] = [c for c in pod["containers"] if c["name"] != "csi-snapshotter"]
    assert any("csi-snapshotter" in e for e in consistency(docs))


def test_binding_to_a_missing_account_is_caught() -> None:
    docs = fresh()
    find(docs, "ClusterRoleBinding", "localcsi-node")["subjects"][0]["name"] = "localcsi"
    assert any("not a defined ServiceAccount" in e for e in consistency(docs))


def test_check_manifests_command_passes(tmp_path: Path) -> None:
    assert cm.main(["--skip-lint"]) == 0
