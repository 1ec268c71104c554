"""Prometheus metrics from a real driver: RPC counts by code, latency buckets, backend gauges."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from csi.gen.csi import v1 as csi
from csi.metrics import parse_address
from tests.support import MIB, NODE_ID, DriverProcess, connect, create_request, mount_cap

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def metered_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DriverProcess, str]]:
    port = free_port()
    proc = DriverProcess(tmp_path_factory.mktemp("metrics"), extra_args=("--metrics-address", f"127.0.0.1:{port}"))
    with proc.running():
        yield proc, f"http://127.0.0.1:{port}"


async def scrape(url: str) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return str(resp.read().decode())

    return parse(await anyio.to_thread.run_sync(get))


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9808") == ("127.0.0.1", 9808)
    assert parse_address(":9808") == ("", 9808)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("9808", "host:", "host:port", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


@pytest.mark.anyio
@pytest.mark.root
async def test_scrape_counts_real_rpcs_and_backend_state(metered_driver: tuple[DriverProcess, str]) -> None:
    driver, url = metered_driver
    staging = driver.kubelet_dir / "staging"
    target = driver.kubelet_dir / "target"
    staging.mkdir()
    cap = mount_cap("ext4")
    async with connect(driver.socket_path) as c:
        for _ in range(3):
            await c.identity.probe(csi.ProbeRequest())
        created = await c.controller.create_volume(create_request("pvc-metrics", 64 * MIB, cap))
        assert created.volume is not None
        volume_id = created.volume.volume_id
        await c.controller.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=NODE_ID, volume_capability=cap))
        await c.node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap))
        await c.node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), target_path=str(target), volume_capability=cap))
        with pytest.raises(GRPCError) as info:
            await c.node.node_publish_volume(csi.NodePublishVolumeRequest(
                volume_id="lcv-" + "0" * 32, staging_target_path=str(staging), target_path=str(target),
                volume_capability=cap))
        assert info.value.status is Status.NOT_FOUND

        samples = await scrape(url)
        assert value(samples, "localcsi_rpc_total", rpc="Probe", code="OK") == 3
        for rpc in ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume"):
            assert value(samples, "localcsi_rpc_total", rpc=rpc, code="OK") == 1
            assert value(samples, "localcsi_rpc_duration_seconds_count", rpc=rpc) == 1
        assert value(samples, "localcsi_rpc_total", rpc="NodePublishVolume", code="OK") == 1
        assert value(samples, "localcsi_rpc_total", rpc="NodePublishVolume", code="NOT_FOUND") == 1
        assert value(samples, "localcsi_rpc_duration_seconds_count", rpc="NodePublishVolume") == 2
        # NodeStage ran mkfs.ext4: it cannot have finished within 100 µs, and it is in the +Inf bucket.
        assert value(samples, "localcsi_rpc_duration_seconds_bucket", rpc="NodeStageVolume", le="0.0001") == 0
        assert value(samples, "localcsi_rpc_duration_seconds_bucket", rpc="NodeStageVolume", le="+Inf") == 1
        assert value(samples, "localcsi_rpc_duration_seconds_sum", rpc="NodeStageVolume") > 0.0001
        assert value(samples, "localcsi_backend_up") == 1
        assert value(samples, "localcsi_volumes", pool="default", condition="healthy") == 1
        assert value(samples, "localcsi_volumes", pool="default", condition="abnormal") == 0
        assert value(samples, "localcsi_volumes_provisioned_bytes", pool="default") == created.volume.capacity_bytes
        assert value(samples, "localcsi_capacity_available_bytes", pool="default") > 0
        assert value(samples, "localcsi_loop_devices_attached") >= 1

        await c.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                          target_path=str(target)))
        await c.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=volume_id,
                                                                      staging_target_path=str(staging)))
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
        after = await scrape(url)
        assert value(after, "localcsi_volumes", pool="default", condition="healthy") == 0
        assert value(after, "localcsi_rpc_total", rpc="DeleteVolume", code="OK") == 1
        # The scrape itself is not an RPC: counts did not move between the two scrapes except for the new calls.
        assert value(after, "localcsi_rpc_total", rpc="Probe", code="OK") == 3


@pytest.mark.anyio
@pytest.mark.root
async def test_other_paths_are_not_found(metered_driver: tuple[DriverProcess, str]) -> None:
    _, url = metered_driver

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(url + path, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await anyio.to_thread.run_sync(get, "/") == 404
    assert await anyio.to_thread.run_sync(get, "/metrics?x=1") == 200


def test_bad_metrics_address_fails_start_up(tmp_path: Path) -> None:
    proc = DriverProcess(tmp_path, extra_args=("--metrics-address", "nonsense"))
    with pytest.raises(RuntimeError):
        proc.start(timeout=10)
    proc.cleanup()
    assert "HOST:PORT" in proc.log()
