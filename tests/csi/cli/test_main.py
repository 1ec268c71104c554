"""The entry point (csi/cli/main.py): the version, and what a serving driver keeps out of memory: pydantic always,
prometheus_client unless metrics are on, and the client tools (bench, ctl, disks).

Each import check runs in a fresh interpreter: this test process has imported all of them long ago.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import localcsi

REPO = Path(__file__).resolve().parents[3]


WATCHED = ("pydantic", "prometheus_client", "csi.bench", "csi.cli.ctl", "csi.cli.disks")


def _loaded_after(code: str) -> set[str]:
    probe = code + f"\nimport sys\nprint(' '.join(sorted(m for m in {WATCHED!r} " \
                   "if sys.modules.get(m) is not None)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    return set(done.stdout.split())


def test_serve_imports_neither_pydantic_nor_prometheus_without_metrics() -> None:
    loaded = _loaded_after(
        "from csi.cli import main as cli\n"
        "cli.keep_pydantic_out(['serve'])\n"
        "cli.build_parser('serve')\n"
        "import csi.server\n"
        "from csi.gen.csi import v1 as csi\n"
        "csi.CreateVolumeRequest.parse(bytes(csi.CreateVolumeRequest(name='x')))\n"
    )
    assert loaded == set()


def test_messages_still_work_without_pydantic() -> None:
    loaded = _loaded_after(
        "from csi.cli import main as cli\n"
        "cli.keep_pydantic_out(['serve'])\n"
        "from csi.gen.csi import v1 as csi\n"
        "req = csi.CreateVolumeRequest(name='x', parameters={'a': 'b'})\n"
        "assert csi.CreateVolumeRequest.parse(bytes(req)) == req\n"
        "assert req.to_dict()['parameters'] == {'a': 'b'}\n"
    )
    assert "pydantic" not in loaded


def test_other_commands_leave_pydantic_alone() -> None:
    loaded = _loaded_after(
        "from csi.cli import main as cli\n"
        "cli.keep_pydantic_out(['bench'])\n"
        "import betterproto2\n"
    )
    assert "pydantic" in loaded  # installed in the dev venv, so betterproto2 imports it as usual


def test_metrics_import_prometheus_client_when_used() -> None:
    loaded = _loaded_after(
        "from csi.metrics import DriverMetrics\n"
        "DriverMetrics(None, driver='d', backend_name='b', version='v')\n"
    )
    assert "prometheus_client" in loaded


def test_the_other_commands_still_parse() -> None:
    loaded = _loaded_after("from csi.cli import main as cli\ncli.build_parser('bench').parse_args(['ctl', 'info'])\n")
    assert {"csi.bench", "csi.cli.ctl", "csi.cli.disks"} <= loaded


def test_version() -> None:
    out = localcsi("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("localcsi ")
