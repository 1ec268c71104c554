"""Small helpers over the Kubernetes Python client for the kind suite.

Every wait polls with a deadline and fails with the last state it saw.
Objects are built as plain dicts (the API's own shape) so a reader can map
them one to one onto YAML. The API clients are held as ``Any``: the generated
models mark every field optional, and the suite reads fields the API server
always sets once an object exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

DRIVER_NAME = "localcsi.dev"
TOPOLOGY_KEY = "topology.localcsi.dev/node"
DRIVER_NAMESPACE = "localcsi"
POLL_S = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class Backend:
    """What the suite expects of the backend under test (LOCALCSI_BACKEND)."""

    name: str

    @property
    def storage_class(self) -> str:
        return f"localcsi-{self.name}"

    @property
    def has_snapshots(self) -> bool:
        return self.name in ("loopfile", "lvm")

    @property
    def grows(self) -> bool:
        """A whole disk cannot grow past itself; the other backends grow on request."""
        return self.name != "rawdisk"


@dataclass(frozen=True)
class Kube:
    """API clients plus the namespace a test owns."""

    core: Any
    storage: Any
    custom: Any
    namespace: str
    image: str

    @classmethod
    def connect(cls, namespace: str) -> Kube:
        """Clients for the cluster in $KUBECONFIG, acting in ``namespace``."""
        load: Any = config.load_kube_config
        load(config_file=os.environ.get("KUBECONFIG"))
        return cls(
            core=client.CoreV1Api(),
            storage=client.StorageV1Api(),
            custom=client.CustomObjectsApi(),
            namespace=namespace,
            image=os.environ.get("LOCALCSI_IMAGE", "localcsi:e2e"),
        )

    # --- objects ---------------------------------------------------------------------------

    def create_pvc(
        self,
        name: str,
        storage_class: str,
        size: str = "64Mi",
        *,
        block: bool = False,
        access_mode: str = "ReadWriteOnce",
        data_source: dict[str, str] | None = None,
    ) -> None:
        spec: dict[str, Any] = {
            "accessModes": [access_mode],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": size}},
            "volumeMode": "Block" if block else "Filesystem",
        }
        if data_source:
            spec["dataSource"] = data_source
        body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}
        self.core.create_namespaced_persistent_volume_claim(self.namespace, body)

    def create_pod(self, name: str, claim: str, *, block: bool = False, node: str | None = None) -> None:
        """A pod that mounts (or maps, for block) one claim and sleeps; tests exec into it."""
        container: dict[str, Any] = {
            "name": "app",
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
        }
        if block:
            container["volumeDevices"] = [{"name": "data", "devicePath": "/dev/xvda"}]
        else:
            container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec: dict[str, Any] = {
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            "terminationGracePeriodSeconds": 5,
        }
        if node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        self.core.create_namespaced_pod(self.namespace, body)

    def delete_pod(self, name: str, timeout_s: float = 120) -> None:
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=5)
        wait_until(lambda: not self.exists(self.core.read_namespaced_pod, name), timeout_s, f"pod {name} gone")

    def exists(self, read: Callable[[str, str], Any], name: str) -> bool:
        try:
            read(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- waits -----------------------------------------------------------------------------

    def wait_pod_running(self, name: str, timeout_s: float = 240) -> Any:
        def running() -> Any:
            pod = self.core.read_namespaced_pod(name, self.namespace)
            return pod if pod.status.phase == "Running" else None

        return wait_until(running, timeout_s, f"pod {name} Running")

    def wait_pvc_bound(self, name: str, timeout_s: float = 240) -> Any:
        def bound() -> Any:
            pvc = self.core.read_namespaced_persistent_volume_claim(name, self.namespace)
            return pvc if pvc.status.phase == "Bound" else None

        return wait_until(bound, timeout_s, f"claim {name} Bound")

    def pv_of(self, claim: str) -> Any:
        pvc = self.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
        return self.core.read_persistent_volume(pvc.spec.volume_name)

    def exec(self, pod: str, script: str) -> str:
        """Run a shell snippet in the pod; raise if it fails (its exit code is checked via a marker)."""
        out = stream(
            self.core.connect_get_namespaced_pod_exec,
            pod,
            self.namespace,
            command=["/bin/sh", "-c", f"{script}; echo __rc=$?"],
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _request_timeout=120,
        )
        body, _, rc = str(out).rpartition("__rc=")
        if rc.strip() != "0":
            raise AssertionError(f"exec in {pod} failed ({rc.strip()}): {script}\n{body}")
        return body

    # --- snapshots -------------------------------------------------------------------------

    def create_snapshot(self, name: str, claim: str, snapshot_class: str) -> None:
        body = {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": name},
            "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": claim}},
        }
        self.custom.create_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", self.namespace, "volumesnapshots", body
        )

    def wait_snapshot_ready(self, name: str, timeout_s: float = 240) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            snap: Any = self.custom.get_namespaced_custom_object(
                "snapshot.storage.k8s.io", "v1", self.namespace, "volumesnapshots", name
            )
            return snap if snap.get("status", {}).get("readyToUse") else None

        snapshot: dict[str, Any] = wait_until(ready, timeout_s, f"snapshot {name} readyToUse")
        return snapshot

    # --- capacity --------------------------------------------------------------------------

    def capacity_bytes(self, storage_class: str, node: str) -> int | None:
        """The CSIStorageCapacity the node's provisioner publishes for the class, in bytes."""
        items = self.storage.list_namespaced_csi_storage_capacity(DRIVER_NAMESPACE).items
        for cap in items:
            labels = (cap.node_topology.match_labels or {}) if cap.node_topology else {}
            if cap.storage_class_name == storage_class and labels.get(TOPOLOGY_KEY) == node:
                return parse_quantity(cap.capacity) if cap.capacity else 0
        return None


def wait_until(probe: Callable[[], T | bool | None], timeout_s: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except ApiException as exc:
            last = exc
            if exc.status not in (404, 409, 429, 500, 503):
                raise
        else:
            if last:
                return cast(T, last)
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last!r}")


UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity as bytes (the subset capacities use: plain, decimal and binary suffixes)."""
    for suffix in sorted(UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * UNITS[suffix])
    return int(text)
