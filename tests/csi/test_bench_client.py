"""``localcsi bench`` from ``pip install .`` (no dev extra, so no grpcio): the default client is grpclib, and
grpcio is used only when asked for, with a one-line refusal where it is missing.

grpcio is hidden from the child process (``sys.modules['grpc'] = None`` makes every import of it fail), as in
a plain install; the same was run by hand from a fresh venv with only ``pip install .``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import DriverProcess

WITHOUT_GRPCIO = "import sys; sys.modules['grpc'] = None; from csi.cli.main import main; sys.exit(main(sys.argv[1:]))"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_GRPCIO, "bench", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.root
def test_bench_runs_without_grpcio(driver: DriverProcess) -> None:
    done = bench("--endpoint", driver.endpoint, "--only", "probe", "--probe-calls", "20")
    assert done.returncode == 0, done.stderr
    assert "grpclib client" in done.stdout
    assert "Probe (sequential)" in done.stdout


def test_grpcio_only_when_asked_for_and_then_said_plainly() -> None:
    done = bench("--endpoint", "unix:///nonexistent.sock", "--client", "grpcio", "--only", "probe")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--client grpcio needs grpcio" in done.stderr
