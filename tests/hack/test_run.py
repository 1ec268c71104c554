"""hack/run, started a second time (setup already done): installs nothing, prints where it serves, how to
change it and a first command to try, and serves within seconds. The driver runs on a throwaway socket and
volume directory and is stopped once it serves; the printed `localcsi ctl` command is run against it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING_WITHIN_S = 5.0


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> tuple[str, float]:
    """The output up to the line holding ``marker``, and how long it took to appear."""
    assert proc.stdout is not None
    start = time.monotonic()
    lines: list[str] = []
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() - start < timeout:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
            continue
        lines.append(line)
        if marker in line:
            return "".join(lines), time.monotonic() - start
    raise AssertionError(f"no {marker!r} within {timeout}s:\n{''.join(lines)}")


@pytest.mark.root
def test_second_start_prints_the_banner_and_serves_quickly(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "hack/setup")], capture_output=True, check=True, timeout=1200)  # the first start
    endpoint = f"unix://{tmp_path}/csi.sock"
    env = {**os.environ, "CSI_ENDPOINT": endpoint, "NODE_ID": "run-test-node", "LOOPFILE_DIR": str(tmp_path / "vols")}
    with subprocess.Popen(
        [str(ROOT / "hack/run"), "--log-level", "DEBUG"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as proc:
        try:
            check_banner_and_serving(proc, endpoint, tmp_path)
        finally:
            proc.send_signal(signal.SIGTERM)  # hack/run exec'd the driver: this is its process
            proc.wait(timeout=30)


def check_banner_and_serving(proc: subprocess.Popen[str], endpoint: str, tmp_path: Path) -> None:
    output, elapsed = read_until(proc, "serving localcsi.dev", timeout=60)
    assert "setup:" not in output  # nothing installed
    banner, _ = output.split("Try, from another shell:", 1)
    lines = banner.splitlines()
    assert lines[0].startswith("localcsi ") and lines[0].endswith(" on the loopfile backend")
    assert any(endpoint in line and "CSI_ENDPOINT" in line for line in lines)
    assert any("run-test-node" in line and "NODE_ID" in line for line in lines)
    assert any(str(tmp_path / "vols") in line and "LOOPFILE_DIR" in line for line in lines)
    assert any("--log-level DEBUG" in line and "hack/run ARGS" in line for line in lines)
    try_line = output.split("Try, from another shell:", 1)[1].splitlines()[1].strip()
    assert try_line.endswith(f"ctl --endpoint {endpoint} info")
    info = subprocess.run(shlex.split(try_line), capture_output=True, text=True, timeout=60, check=False)
    assert info.returncode == 0, info.stderr
    assert "localcsi.dev" in info.stdout
    assert elapsed < SERVING_WITHIN_S, f"hack/run took {elapsed:.2f}s to serve"
