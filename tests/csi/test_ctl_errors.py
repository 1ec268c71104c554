"""``localcsi ctl`` as a user meets it first: a bare socket path works, and every failure is one line and a
non-zero exit, never a Python traceback (issue 15 item 16), also when its reader stops early (``| head``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DriverProcess

LOCALCSI = [sys.executable, "-m", "csi.cli"]


def ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOCALCSI, "ctl", *args], capture_output=True, text=True, timeout=timeout, check=False)


def one_line_error(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr, done.stderr
    assert text in done.stderr.strip().splitlines()[-1], done.stderr


@pytest.mark.root
def test_a_bare_socket_path_is_an_endpoint(driver: DriverProcess) -> None:
    done = ctl("--endpoint", driver.socket_path, "probe")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ready"] is True


def test_bad_and_unreachable_endpoints_are_one_line(tmp_path: Path) -> None:
    one_line_error(ctl("--endpoint", "relative.sock", "probe"), 2, "argument --endpoint: endpoint must be")
    one_line_error(ctl("--endpoint", "unix://relative", "probe"), 2, "needs an absolute path")
    one_line_error(ctl("--endpoint", str(tmp_path / "none.sock"), "probe"), 1,
                   f"cannot reach {tmp_path / 'none.sock'}")


@pytest.mark.root
def test_a_driver_that_does_not_answer_is_one_line(driver: DriverProcess) -> None:
    assert driver.proc is not None
    driver.proc.send_signal(signal.SIGSTOP)
    try:
        one_line_error(ctl("--endpoint", driver.socket_path, "--timeout", "1", "probe"), 1, "did not answer within 1 s")
    finally:
        driver.proc.send_signal(signal.SIGCONT)


def test_a_reader_that_stops_early_ends_it_quietly() -> None:
    """What ``ctl list | head`` does to ctl's output, without a driver: far more JSON than a pipe holds."""
    code = "import sys; from csi.cli.ctl import emit; sys.exit(emit([{'volume': 'x' * 1000}] * 1000))"
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.read(10)
    reader.stdout.close()  # head has what it wanted
    stderr = reader.stderr.read().decode()
    reader.stderr.close()
    assert reader.wait(30) == 141
    assert stderr == ""
