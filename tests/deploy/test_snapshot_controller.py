"""deploy/snapshot-controller: pinned to the csi-snapshotter's release, and its patches turn on distributed
snapshotting (which node-deployment csi-snapshotters depend on).

The kustomization's two bases are remote (GitHub), so offline its patches are rendered against stand-ins shaped
like the upstream objects they patch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()
DIR = ROOT / "deploy/snapshot-controller"
UPSTREAM = "https://github.com/kubernetes-csi/external-snapshotter//"

STAND_INS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: snapshot-controller, namespace: kube-system}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/name: snapshot-controller}}
  template:
    metadata: {labels: {app.kubernetes.io/name: snapshot-controller}}
    spec:
      containers:
        - name: snapshot-controller
          image: registry.k8s.io/sig-storage/snapshot-controller:v0.0.0
          args: ["--v=5", "--leader-election=true"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: snapshot-controller-runner}
rules:
  - apiGroups: [""]
    resources: ["persistentvolumes"]
    verbs: ["get", "list", "watch"]
"""


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    return loaded


def snapshotter_pin() -> str:
    base = yaml.safe_load((ROOT / "deploy/base/kustomization.yaml").read_text())
    return str(next(i["newTag"] for i in base["images"] if i["name"].endswith("/csi-snapshotter")))


def test_crds_and_controller_come_from_the_csi_snapshotter_release() -> None:
    resources = kustomization()["resources"]
    assert len(resources) == 2
    assert all(r.startswith(UPSTREAM) for r in resources)
    assert {re.sub(r"\?ref=.*", "", r).removeprefix(UPSTREAM) for r in resources} == {
        "client/config/crd",
        "deploy/kubernetes/snapshot-controller",
    }
    assert {r.rsplit("?ref=", 1)[1] for r in resources} == {snapshotter_pin()}


def test_the_kind_suite_installs_this_step_at_the_same_version() -> None:
    script = (ROOT / "hack/kind-e2e").read_text()
    assert 'k apply -k "${ROOT}/deploy/snapshot-controller"' in script
    version = re.search(r"^SNAPSHOTTER_VERSION=(\S+)$", script, re.MULTILINE)
    assert version is not None
    assert version[1] == snapshotter_pin()


def test_patches_enable_distributed_snapshotting_and_node_reads(tmp_path: Path) -> None:
    (tmp_path / "upstream.yaml").write_text(STAND_INS)
    local = kustomization() | {"resources": ["upstream.yaml"]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(local))
    docs = cm.render(cm.Target(tmp_path))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    controller = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-distributed-snapshotting" in controller["args"]
    assert deployment["spec"]["replicas"] == 1
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]} in role["rules"]


def test_the_docs_name_this_step() -> None:
    for doc in ("deploy/README.md", "e2e/kind/README.md"):
        assert "deploy/snapshot-controller" in (ROOT / doc).read_text(), doc
    assert not (ROOT / "e2e/kind/snapshot-controller").exists()
