"""CI entry for the reliability campaign: ``hack/reliability --quick`` must exit 0.

It fuzzes every RPC, kills the driver through hundreds of lifecycle operations, fills the backing filesystem,
plants foreign signatures, checks exposure and runs the load phase (docs/reliability.md). Its summary is
printed on failure.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_campaign_finds_nothing() -> None:
    done = subprocess.run([str(REPO / "hack" / "reliability"), "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=400, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
    assert "| acknowledged writes lost | 0 |" in done.stdout
    assert "| leaks | 0 |" in done.stdout
    assert "| unexpected codes | 0 |" in done.stdout
