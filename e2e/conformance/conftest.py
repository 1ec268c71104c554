"""pytest wiring for the conformance suite: command-line options and the per-spec harness."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from e2e.conformance.client import connect, fetch_capabilities
from e2e.conformance.config import AccessType, SuiteConfig, load_secrets, parse_params, parse_size
from e2e.conformance.harness import Harness
from e2e.conformance.resources import Tracker


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("csi-conformance", "CSI conformance suite")
    group.addoption("--csi-endpoint", default=os.environ.get("CSI_ENDPOINT", ""),
                    help="unix:///path/csi.sock or tcp://host:port of the plugin under test [$CSI_ENDPOINT]")
    group.addoption("--csi-staging-dir", default="", help="directory under which staging paths are created")
    group.addoption("--csi-target-dir", default="", help="directory under which target paths are created")
    group.addoption("--csi-access", choices=[a.value for a in AccessType], default=AccessType.MOUNT.value)
    group.addoption("--csi-fs-type", default="ext4", help="fs_type in mount capabilities")
    group.addoption("--csi-volume-size", default="64Mi", help="size of test volumes (bytes, or 64Mi, 1Gi, ...)")
    group.addoption("--csi-expand-size", default="", help="size expansion specs grow to (default: twice the volume)")
    group.addoption("--csi-param", action="append", default=[], metavar="KEY=VALUE",
                    help="CreateVolume parameter (repeatable)")
    group.addoption("--csi-secrets-file", default="", help="JSON object of secrets sent with every RPC that takes them")
    group.addoption("--csi-node-id", default="", help="node id for ControllerPublish (default: NodeGetInfo's)")
    group.addoption("--csi-rpc-timeout", type=float, default=120.0, help="deadline in seconds for each RPC")


def _config(config: pytest.Config) -> SuiteConfig:
    endpoint = str(config.getoption("--csi-endpoint"))
    staging = str(config.getoption("--csi-staging-dir"))
    target = str(config.getoption("--csi-target-dir"))
    if not endpoint or not staging or not target:
        raise pytest.UsageError("the conformance suite needs --csi-endpoint, --csi-staging-dir and --csi-target-dir")
    size = parse_size(str(config.getoption("--csi-volume-size")))
    expand = str(config.getoption("--csi-expand-size"))
    return SuiteConfig(
        endpoint=endpoint,
        staging_dir=Path(staging),
        target_dir=Path(target),
        access=AccessType(config.getoption("--csi-access")),
        fs_type=str(config.getoption("--csi-fs-type")),
        volume_size_bytes=size,
        expand_size_bytes=parse_size(expand) if expand else 2 * size,
        parameters=parse_params(list(config.getoption("--csi-param"))),
        secrets=load_secrets(str(config.getoption("--csi-secrets-file"))),
        node_id=str(config.getoption("--csi-node-id")),
        rpc_timeout=float(config.getoption("--csi-rpc-timeout")),
    )


@pytest.fixture(scope="session")
def suite_config(pytestconfig: pytest.Config) -> SuiteConfig:
    return _config(pytestconfig)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("help") or config.getoption("collectonly"):
        return
    try:
        _config(config)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def h(suite_config: SuiteConfig) -> AsyncIterator[Harness]:
    """One connection per spec, the plugin's capabilities, and a tracker emptied at teardown."""
    async with connect(suite_config.endpoint, suite_config.rpc_timeout) as client:
        caps = await fetch_capabilities(client)
        tracker = Tracker(client, suite_config)
        try:
            yield Harness(client, caps, suite_config, tracker)
        finally:
            problems = await tracker.cleanup()
        if problems:
            pytest.fail("cleanup through the plugin failed:\n  " + "\n  ".join(problems))
