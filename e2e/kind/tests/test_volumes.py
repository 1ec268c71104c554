"""The driver as Kubernetes uses it, on a kind cluster with the real sidecars and kubelet."""

from __future__ import annotations

import pytest

from e2e.kind.tests.kube import DRIVER_NAME, TOPOLOGY_KEY, Backend, Kube, wait_until

MI = 1 << 20


def start_writer(kube: Kube, backend: Backend, claim: str = "data", size: str = "64Mi") -> str:
    """A claim and a running pod on it; returns the node it landed on."""
    kube.create_pvc(claim, backend.storage_class, size)
    kube.create_pod("writer", claim)
    return str(kube.wait_pod_running("writer").spec.node_name)


def published_capacity(kube: Kube, backend: Backend, node: str) -> int:
    """Wait for the node's provisioner to publish a capacity for the class; return it."""

    def probe() -> int | None:
        return kube.capacity_bytes(backend.storage_class, node)

    capacity: int = wait_until(probe, 120, f"CSIStorageCapacity of {node}")
    return capacity


def test_data_survives_pod_recreation(kube: Kube, backend: Backend) -> None:
    start_writer(kube, backend)
    kube.exec("writer", "echo kept > /data/file && sync")
    kube.delete_pod("writer")
    kube.create_pod("reader", "data")
    kube.wait_pod_running("reader")
    assert kube.exec("reader", "cat /data/file").strip() == "kept"


def test_late_binding_puts_the_volume_on_the_pods_node(kube: Kube, backend: Backend) -> None:
    kube.create_pvc("data", backend.storage_class)
    pvc = kube.core.read_namespaced_persistent_volume_claim("data", kube.namespace)
    assert pvc.status.phase == "Pending"  # WaitForFirstConsumer: nothing happens before a pod
    kube.create_pod("writer", "data")
    node = kube.wait_pod_running("writer").spec.node_name
    kube.wait_pvc_bound("data")
    pv = kube.pv_of("data")
    assert pv.spec.csi.driver == DRIVER_NAME
    terms = pv.spec.node_affinity.required.node_selector_terms
    assert [(e.key, e.values) for t in terms for e in t.match_expressions] == [(TOPOLOGY_KEY, [node])]
    node_labels = kube.core.read_node(node).metadata.labels
    assert node_labels[TOPOLOGY_KEY] == node


def test_storage_capacity_is_published_and_shrinks(kube: Kube, backend: Backend) -> None:
    workers = [n.metadata.name for n in kube.core.list_node().items if TOPOLOGY_KEY in (n.metadata.labels or {})]
    assert workers, "no node carries the topology label: the node plugin did not register"
    before = {n: published_capacity(kube, backend, n) for n in workers}
    node = start_writer(kube, backend, size="256Mi")
    kube.exec("writer", "dd if=/dev/zero of=/data/fill bs=1M count=200 conv=fsync")

    def shrunk() -> bool:
        now = kube.capacity_bytes(backend.storage_class, node)
        return now is not None and now <= before[node] - 200 * MI

    wait_until(shrunk, 180, f"capacity on {node} to drop below {before[node] - 200 * MI}")


def test_online_expansion_grows_the_filesystem(kube: Kube, backend: Backend) -> None:
    if not backend.grows:
        pytest.skip(f"{backend.name} volumes are whole disks and cannot grow")
    start_writer(kube, backend, size="64Mi")
    size_before = int(kube.exec("writer", "df -B1 --output=size /data | tail -n1"))
    kube.core.patch_namespaced_persistent_volume_claim(
        "data", kube.namespace, {"spec": {"resources": {"requests": {"storage": "256Mi"}}}}
    )

    def grown() -> bool:
        pvc = kube.core.read_namespaced_persistent_volume_claim("data", kube.namespace)
        return (pvc.status.capacity or {}).get("storage") == "256Mi"

    wait_until(grown, 240, "claim status capacity 256Mi")
    size_after = int(kube.exec("writer", "df -B1 --output=size /data | tail -n1"))
    assert size_after > size_before + 128 * MI
    kube.exec("writer", "dd if=/dev/zero of=/data/big bs=1M count=150 conv=fsync")


def test_snapshot_restores_the_data_on_the_same_node(kube: Kube, backend: Backend) -> None:
    if not backend.has_snapshots:
        pytest.skip(f"{backend.name} has no snapshots")
    node = start_writer(kube, backend)
    kube.exec("writer", "echo before > /data/file && sync")
    kube.create_snapshot("snap", "data", backend.storage_class)
    snap = kube.wait_snapshot_ready("snap")
    assert snap["status"]["restoreSize"]
    kube.exec("writer", "echo after > /data/file && sync")
    source = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    kube.create_pvc("restored", backend.storage_class, data_source=source)
    # Snapshots are node-local: the restored claim must be consumed on the source's node.
    kube.create_pod("reader", "restored", node=node)
    kube.wait_pod_running("reader")
    assert kube.exec("reader", "cat /data/file").strip() == "before"
    assert kube.exec("writer", "cat /data/file").strip() == "after"


def test_raw_block_claim(kube: Kube, backend: Backend) -> None:
    kube.create_pvc("data", backend.storage_class, block=True)
    kube.create_pod("writer", "data", block=True)
    kube.wait_pod_running("writer")
    kube.exec("writer", "printf localcsi-block | dd of=/dev/xvda bs=4096 conv=sync,fsync")
    assert kube.exec("writer", "dd if=/dev/xvda bs=14 count=1 2>/dev/null") == "localcsi-block"


def test_read_write_once_pod_admits_one_pod(kube: Kube, backend: Backend) -> None:
    kube.create_pvc("data", backend.storage_class, access_mode="ReadWriteOncePod")
    kube.create_pod("first", "data")
    node = kube.wait_pod_running("first").spec.node_name
    kube.create_pod("second", "data", node=node)

    def refused() -> bool:
        pod = kube.core.read_namespaced_pod("second", kube.namespace)
        conditions = {c.type: c for c in pod.status.conditions or []}
        scheduled = conditions.get("PodScheduled")
        return scheduled is not None and scheduled.status == "False" and scheduled.reason == "Unschedulable"

    wait_until(refused, 60, "the second pod to be refused by the scheduler")
    assert kube.core.read_namespaced_pod("second", kube.namespace).status.phase == "Pending"
    kube.delete_pod("first")
    kube.wait_pod_running("second")


def test_volume_attachment_names_the_node(kube: Kube, backend: Backend) -> None:
    node = start_writer(kube, backend)
    pv = kube.pv_of("data").metadata.name
    attachments = kube.storage.list_volume_attachment().items
    mine = [a for a in attachments if a.spec.source.persistent_volume_name == pv]
    assert [(a.spec.attacher, a.spec.node_name, a.status.attached) for a in mine] == [(DRIVER_NAME, node, True)]
