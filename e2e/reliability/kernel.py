"""Phase 7 (full campaign only): exhaustion that needs a real kernel, in the kernel lane.

This machine's kernel has no device-mapper, and its loop devices are shared with
other users, so two exhaustion checks boot Debian's 6.1 kernel under qemu
(``hack/vmtest``, 3-10 minutes under TCG) and run there:

* ``tests/kernel/test_lvm_exhaustion.py``: a thin pool filled by a writer of an
  overprovisioned volume, and a volume group out of extents, through the lvm driver;
* ``tests/kernel/test_loop_exhaustion.py``: every loop device of the guest taken
  (the loop module loaded with ``max_part=255``: 4,096 devices), through the
  loopfile driver;
* ``tests/kernel/test_lvm_paths.py``: the paths phase's node-path attacks
  (e2e/reliability/paths.py) against lvm, thick and thin.

What must hold is asserted by those tests (RESOURCE_EXHAUSTED, no leftovers,
other volumes' data intact, conditions abnormal while the pool is full). This
phase runs them, fails on any failure or skip, and keeps the figures they print.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio

from e2e.reliability.common import PhaseResult

REPO = Path(__file__).resolve().parents[2]
TESTS = ("tests/kernel/test_lvm_exhaustion.py", "tests/kernel/test_loop_exhaustion.py",
         "tests/kernel/test_lvm_paths.py")
LANE_SECONDS = 3000
FIGURE_LINES = re.compile(r"(filler: .*|took \d+ loop devices .*)$", re.M)
SUMMARY = re.compile(r"=+ (.*(?:passed|failed|skipped|error).*) in ([\d.]+)s")
DURATIONS = re.compile(r"^([\d.]+s call\s+\S+)$", re.M)
LANE_TIMES = re.compile(r"vmtest: (boot took .*)$", re.M)


async def run() -> PhaseResult:
    result = PhaseResult("kernel")
    env = {**os.environ, "LOCALCSI_VMTEST_LOOP_OPTIONS": "max_part=255"}
    argv = [str(REPO / "hack" / "vmtest"), *TESTS, "-s", "-v", "-rA", "--durations=0"]
    with anyio.move_on_after(LANE_SECONDS) as scope:
        done = await anyio.run_process(argv, cwd=REPO, env=env, check=False, stderr=-2)
    if scope.cancelled_caught:
        result.fail(f"the kernel lane did not finish within {LANE_SECONDS} s")
        return result
    output = done.stdout.decode(errors="replace")
    summary = SUMMARY.findall(output)
    result.figures.update({
        "lane_exit_status": done.returncode,
        "pytest_summary": summary[-1][0] if summary else "",
        "figures": FIGURE_LINES.findall(output),
        "test_seconds": DURATIONS.findall(output),
        "lane_times": LANE_TIMES.findall(output),
    })
    if done.returncode == 125:
        result.fail("the kernel lane could not run (hack/vmtest exit 125): " + output[-2000:])
    elif done.returncode != 0:
        result.fail("kernel-lane exhaustion tests failed:\n" + output[-6000:])
    elif summary and ("skipped" in summary[-1][0] or "failed" in summary[-1][0]):
        result.fail(f"kernel-lane exhaustion tests did not all run: {summary[-1][0]}")
    return result
