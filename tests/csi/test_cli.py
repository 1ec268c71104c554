"""The command line: version, fail-fast start-up, and `localcsi ctl` against a real driver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DriverProcess

LOCALCSI = [sys.executable, "-m", "csi.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOCALCSI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("localcsi ")


def test_serve_without_endpoint_fails_fast() -> None:
    out = run("serve", "--node-id", "n1")
    assert out.returncode == 2
    assert "--endpoint" in out.stderr


def test_serve_with_bad_endpoint_fails_fast() -> None:
    out = run("serve", "--endpoint", "http://x", "--node-id", "n1")
    assert out.returncode == 2
    assert "unix:///path or tcp://host:port" in out.stderr


@pytest.mark.root
def test_serve_with_unusable_directory_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    out = run("serve", "--endpoint", f"unix://{tmp_path}/csi.sock", "--node-id", "n1",
              "--loopfile-dir", str(blocker / "volumes"))
    assert out.returncode == 2
    assert "loopfile directory" in out.stderr
    assert not (tmp_path / "csi.sock").exists()


@pytest.mark.root
def test_serve_refuses_a_socket_another_driver_serves(driver: DriverProcess) -> None:
    out = run("serve", "--endpoint", driver.endpoint, "--node-id", "n2",
              "--loopfile-dir", str(driver.root / "other"))
    assert out.returncode == 2
    assert "another process is serving" in out.stderr


@pytest.mark.root
def test_ctl_round_trip(driver: DriverProcess) -> None:
    ep = ["ctl", "--endpoint", driver.endpoint, "-o", "json"]
    info = json.loads(run(*ep, "info").stdout)
    assert info["plugin"]["name"] == "localcsi.dev"
    assert info["node_info"]["node_id"] == driver.node_id
    created = run(*ep, "create", "pvc-ctl", "--size", "64Mi", "--param", "loopfile.localcsi.dev/provisioning=thin")
    assert created.returncode == 0, created.stderr
    volume = json.loads(created.stdout)["volume"]
    assert int(volume["capacity_bytes"]) == 64 << 20
    listed = json.loads(run(*ep, "list", "--page-size", "1").stdout)
    assert [e["volume"]["volume_id"] for e in listed] == [volume["volume_id"]]
    capacity = json.loads(run(*ep, "capacity").stdout)
    assert int(capacity["available_capacity"]) > 0
    bad = run(*ep, "delete", "")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    assert run(*ep, "delete", volume["volume_id"]).returncode == 0
    assert json.loads(run(*ep, "list").stdout) == []
