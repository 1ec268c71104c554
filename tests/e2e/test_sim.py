"""The kubelet-free end-to-end harness (``e2e/sim``) as pytest cases: one per scenario and backend.

loopfile and rawdisk run on the host (root). The lvm cases need device-mapper,
so they run only in the kernel lane and only when asked for by name
(``hack/vmtest tests/e2e/test_sim.py -k lvm``): CI runs the harness on lvm as
its own command, ``hack/e2e-sim --backend lvm``, and the lane's default run
leaves tests/e2e out. Each case brings up a fresh two-node cluster with a
controller-mode driver, runs the scenario, deletes what it made through the
sidecars' calls and fails on any leak. ``LOCALCSI_E2E_SCENARIOS=a,b`` narrows
the scenarios, ``LOCALCSI_E2E_SEED`` fixes the seed.
"""

from __future__ import annotations

import os
import random

import pytest

from e2e.sim.profiles import profile_for
from e2e.sim.runner import run_one
from e2e.sim.scenarios import SCENARIOS
from e2e.sim.stats import Stats

IN_LANE = os.environ.get("LOCALCSI_VMTEST") == "1"
CHOSEN = [s for s in os.environ.get("LOCALCSI_E2E_SCENARIOS", "").split(",") if s]
SELECTED = CHOSEN or list(SCENARIOS)
SEED = int(os.environ.get("LOCALCSI_E2E_SEED", "20240611"))


async def run_scenario(backend: str, name: str) -> None:
    profile = profile_for(backend)
    reason = profile.unavailable_reason()
    if reason:
        if IN_LANE and backend == "lvm":
            pytest.fail(f"kernel lane broken: {reason}")
        pytest.skip(reason)
    stats = Stats()
    result = await run_one(profile, name, stats, random.Random(f"{SEED}-{name}"))
    print(stats.summary(backend))
    if result.outcome == "skipped":
        pytest.skip(result.detail)
    assert result.outcome == "passed", f"{result.detail}; leaks: {list(result.leaks)}"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.anyio
@pytest.mark.parametrize("name", SELECTED)
@pytest.mark.parametrize("backend", ["loopfile", "rawdisk"])
async def test_on_the_host(backend: str, name: str) -> None:
    await run_scenario(backend, name)


@pytest.mark.kernel
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1800)  # qemu TCG: the harness's own deadlines stretch (e2e.sim.deadlines), burst-100 most
@pytest.mark.anyio
@pytest.mark.parametrize("name", SELECTED)
async def test_lvm(name: str) -> None:
    await run_scenario("lvm", name)

