"""``localcsi ctl`` against a real driver: every command, the three output formats, and user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csi.cli.ctl import Output, pool_of
from tests.support import DriverProcess

LOCALCSI = [sys.executable, "-m", "csi.cli"]


def ctl(driver: DriverProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*LOCALCSI, "ctl", "--endpoint", driver.endpoint, *args], capture_output=True, text=True,
                          timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"ctl {' '.join(args)}: {done.stderr}"
    return done


def test_an_id_names_its_pool() -> None:
    assert pool_of("lcv-" + "a" * 32 + "@fast") == "fast" and pool_of("lcv-" + "a" * 32) == "-"


def test_a_table_lines_its_columns_up_and_says_when_it_is_empty() -> None:
    out = Output(data=[], rows=[["a", "1"], ["bbbb", "22"]], header=("NAME", "N"))
    assert out.render("table").splitlines() == ["NAME  N", "a     1", "bbbb  22"]
    assert Output(data=[], header=("NAME",)).render("table").splitlines() == ["NAME", "(none)"]
    assert Output(data={"x": 1}, ids=["i1", "i2"]).render("id") == "i1\ni2"
    assert json.loads(Output(data={"x": 1}).render("json")) == {"x": 1}


@pytest.mark.root
def test_the_quick_start_flow(driver: DriverProcess, tmp_path: Path) -> None:
    """What docs/quickstart.md's ctl section does: create, list by name, stage, publish, write, snapshot,
    restore, clone, expand, tear down; -o id feeds the next command."""
    volume = ctl(driver, "-o", "id", "create", "pvc-ctl", "--size", "64Mi").stdout.strip()
    assert volume.startswith("lcv-")
    table = ctl(driver, "list").stdout
    assert "pvc-ctl" in table and volume in table and "64.0 MiB" in table and "healthy" in table
    staging, target = driver.kubelet_dir / "ctl-staging", driver.kubelet_dir / "ctl-target"
    ctl(driver, "stage", volume, str(staging))
    ctl(driver, "publish", volume, str(staging), str(target))
    (target / "hello").write_text("world")
    stats = ctl(driver, "stats", volume, str(target)).stdout
    assert "healthy" in stats and "BYTES" in stats
    snapshot = ctl(driver, "-o", "id", "snapshot", "create", volume, "snap-ctl").stdout.strip()
    assert snapshot.startswith("lcs-")
    assert snapshot in ctl(driver, "snapshot", "list", "--source", volume).stdout
    restored = ctl(driver, "-o", "id", "create", "pvc-restored", "--size", "64Mi", "--from-snapshot", snapshot)
    clone = ctl(driver, "create", "pvc-clone", "--size", "64Mi", "--from-volume", volume, "-o", "json")
    clone_id = json.loads(clone.stdout)["volume"]["volume_id"]
    listed = ctl(driver, "list").stdout
    assert f"snapshot {snapshot}" in listed and f"volume {volume}" in listed
    grown = ctl(driver, "expand", volume, "128Mi").stdout
    assert "128.0 MiB" in grown
    ctl(driver, "unpublish", volume, str(target))
    ctl(driver, "unstage", volume, str(staging))
    for gone in (restored.stdout.strip(), clone_id, volume):
        ctl(driver, "delete", gone)
    ctl(driver, "snapshot", "delete", snapshot)
    assert ctl(driver, "-o", "id", "list").stdout.strip() == ""
    assert "(none)" in ctl(driver, "snapshot", "list").stdout


@pytest.mark.root
def test_info_and_capacity_read_as_facts(driver: DriverProcess) -> None:
    info = ctl(driver, "info").stdout
    assert "driver:" in info and "localcsi.dev" in info and driver.node_id in info
    assert "CREATE_DELETE_SNAPSHOT" in info and "STAGE_UNSTAGE_VOLUME" in info
    assert json.loads(ctl(driver, "info", "-o", "json").stdout)["node_info"]["node_id"] == driver.node_id
    capacity = ctl(driver, "capacity").stdout
    assert "available:" in capacity
    assert int(ctl(driver, "-o", "id", "capacity").stdout) > 0


@pytest.mark.root
def test_errors_are_one_line_and_exit_non_zero(driver: DriverProcess, tmp_path: Path) -> None:
    bad = ctl(driver, "delete", "", check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: INVALID_ARGUMENT: volume_id is required"
    unknown = ctl(driver, "capacity", "--pool", "nope", check=False)
    assert unknown.returncode == 1 and "INVALID_ARGUMENT" in unknown.stderr and "nope" in unknown.stderr
    for endpoint, code in ((f"unix://{tmp_path}/none.sock", 1), (str(tmp_path / "none.sock"), 1), ("ftp://x", 2)):
        done = subprocess.run([*LOCALCSI, "ctl", "--endpoint", endpoint, "list"], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == code, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.root
def test_a_closed_pipe_is_no_traceback(driver: DriverProcess) -> None:
    for i in range(3):
        ctl(driver, "create", f"pvc-pipe-{i}", "--size", "16Mi")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before ctl writes a byte: every write fails with EPIPE
    try:
        done = subprocess.run([*LOCALCSI, "ctl", "--endpoint", driver.endpoint, "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert done.returncode == 0
    for volume in ctl(driver, "-o", "id", "list").stdout.split():
        ctl(driver, "delete", volume)
