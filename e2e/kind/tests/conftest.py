"""Fixtures of the kind suite: the backend under test and a namespace per test.

Run through hack/kind-e2e, which sets KUBECONFIG, LOCALCSI_BACKEND and LOCALCSI_IMAGE.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from e2e.kind.tests.kube import Backend, Kube, wait_until


@pytest.fixture(scope="session")
def backend() -> Backend:
    name = os.environ.get("LOCALCSI_BACKEND")
    if not name:
        pytest.skip("needs a kind cluster: run hack/kind-e2e (sets LOCALCSI_BACKEND and KUBECONFIG)")
    return Backend(name)


@pytest.fixture
def kube(backend: Backend) -> Iterator[Kube]:
    """A fresh namespace for one test; deleted (with its claims, hence its volumes) afterwards."""
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    kube = Kube.connect(namespace)
    kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield kube
    finally:
        kube.core.delete_namespace(namespace)
        wait_until(
            lambda: namespace not in {n.metadata.name for n in kube.core.list_namespace().items},
            300,
            f"namespace {namespace} deleted",
        )
