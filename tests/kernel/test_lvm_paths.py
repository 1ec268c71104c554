"""The reliability campaign's node-path attacks (e2e/reliability/paths.py) against the lvm backend.

Thick and thin, each on a driver of its own over the lane's volume group; every attack must hold (no
finding) and nothing may stay mounted below the driver's kubelet directory. The campaign's kernel phase
runs this file (``hack/reliability --phase kernel``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.reliability import paths
from e2e.reliability.common import DRIVER_NAME, NODE_ID
from e2e.sim.driver import DriverInstance
from e2e.sim.stats import Stats
from tests.kernel.lvmtools import VolumeGroup
from tests.support import force_cleanup

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(900)]


@pytest.mark.parametrize("thin", [False, True], ids=["thick", "thin"])
async def test_every_node_path_attack_holds_on_lvm(tmp_path: Path, lvm_vg: VolumeGroup, thin: bool) -> None:
    kubelet = tmp_path / "kubelet"
    kubelet.mkdir()
    (tmp_path / "driver").mkdir()
    argv = ["--node-id", NODE_ID, "--driver-name", DRIVER_NAME, "--backend", "lvm", "--lvm-vg", lvm_vg.name,
            "--kubelet-dir", str(kubelet), *(["--lvm-thinpool", lvm_vg.thinpool] if thin else [])]
    driver = DriverInstance(tmp_path / "driver", argv, Stats())
    await driver.start()
    try:
        found = await paths.attack_all(paths.Node(driver, kubelet))
    finally:
        await driver.kill9()
        driver._close_log()
        force_cleanup(kubelet, tmp_path / "none")
    assert set(found) >= set(paths.ATTACKS)
    assert {name: findings for name, findings in found.items() if findings} == {}
