"""Fixtures of the deploy checks: the driver's own metric names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import anyio
import pytest
from grpclib.const import Status
from prometheus_client.parser import text_string_to_metric_families

from backends.base import Backend, Capacity, Volume
from csi.metrics import DriverMetrics


class IdleBackend:
    """Just what a scrape asks a backend: no volumes, some room."""

    name = "idle"

    async def list_volumes(self) -> list[Volume]:
        return []

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        return Capacity(available_bytes=1 << 30, maximum_volume_bytes=1 << 29)

    async def attached_devices(self) -> list[str]:
        return []


@pytest.fixture(scope="session")
def driver_metrics() -> dict[str, set[str]]:
    """Every sample name the driver exports (``localcsi_rpc_total``, ``..._bucket``, ...) with its label names.

    Built from the driver's own registry (csi/metrics.py), every family made to produce samples, and the
    exposition text parsed back: what Prometheus would scrape.
    """
    metrics = DriverMetrics(cast(Backend, IdleBackend()), driver="localcsi.dev", backend_name="idle", version="0")
    metrics.rpc_finished("CreateVolume", Status.OK, 0.01)  # labelled families have no samples until used
    text = anyio.run(metrics.render).decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples
