"""Runs e2e/conformance in a child pytest against an endpoint, reads its JUnit report, and judges the run.

A run passes when nothing failed *and* it skipped exactly the specs its configuration expects: the suite
skips a spec whose capability the plugin does not advertise, so a driver that silently stops advertising
one would otherwise pass with fewer specs run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support import DriverProcess

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SUITE_DIR = REPO_ROOT / "e2e" / "conformance"
#: pytest's ``-rs`` summary line: ``SKIPPED [3] e2e/conformance/harness.py:52: <reason>``.
_SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] [^\n]*?:\d+: (.*)$", re.MULTILINE)
#: Skips each run may have, and why: capabilities the backend does not advertise, an access type the run is not.

@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    tests: int
    failures: int
    errors: int
    skipped: int
    failed_specs: tuple[str, ...]
    #: ``<module>::<spec>`` of every skipped spec, e.g. ``test_node::test_node_expand_after_publish_...``.
    skipped_specs: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    def summary(self) -> str:
        return (f"{self.passed} passed, {self.failures} failed, {self.errors} errors, "
                f"{self.skipped} skipped (of {self.tests})")


def run_suite(suite_args: list[str], junit: Path, timeout: float = 900.0) -> SuiteRun:
    argv = [sys.executable, "-m", "pytest", str(SUITE_DIR), "-p", "no:cacheprovider", "-q", "-rfEs",
            "--tb=short", f"--junitxml={junit}", *suite_args]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    if not junit.exists():
        return SuiteRun(proc.returncode, output, 0, 0, 0, 0, ())
    return _from_junit(proc.returncode, output, junit)


def _from_junit(returncode: int, output: str, junit: Path) -> SuiteRun:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"no testsuite in {junit}"
    failed = tuple(
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    )
    skipped = tuple(
        f"{str(case.get('classname')).rpartition('.')[2]}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("skipped") is not None
    )
    return SuiteRun(
        returncode=returncode,
        output=output,
        tests=int(suite.get("tests", "0")),
        failures=int(suite.get("failures", "0")),
        errors=int(suite.get("errors", "0")),
        skipped=int(suite.get("skipped", "0")),
        failed_specs=failed,
        skipped_specs=skipped,
    )


def suite_args(driver: DriverProcess, access: str, fs_type: str = "ext4") -> list[str]:
    """The suite's arguments against ``driver``, with staging and target directories inside its kubelet dir."""
    staging = driver.kubelet_dir / "staging"
    target = driver.kubelet_dir / "pods"
    staging.mkdir(parents=True)
    target.mkdir(parents=True)
    return [
        "--csi-endpoint", driver.endpoint,
        "--csi-staging-dir", str(staging), "--csi-target-dir", str(target),
        "--csi-access", access, "--csi-fs-type", fs_type,
    ]  # fmt: skip


def record(results: list[str], label: str, run: SuiteRun) -> None:
    """The run's line (and its failing specs) for the outer run's terminal summary."""
    results.append(f"{label}: {run.summary()}")
    results.extend(f"  FAILED {spec}" for spec in run.failed_specs)


def assert_passed(run: SuiteRun, driver: DriverProcess, *, skipped: Iterable[str], minimum: int = 50) -> None:
    """At least ``minimum`` specs ran, none failed, and the skipped ones are exactly ``skipped``."""
    print(run.output)
    assert run.tests >= minimum, f"the suite did not run (exit {run.returncode}):\n{run.output}"
    assert run.failures == 0 and run.errors == 0, (
        f"{run.summary()}; failing specs:\n  " + "\n  ".join(run.failed_specs)
        + f"\nleft behind: {driver.leaks()}"
        + f"\n\n{run.output}\n\ndriver log (tail):\n{driver.log(8000)}"
    )
    expected, actual = set(skipped), set(run.skipped_specs)
    assert actual == expected, (
        f"skipped other specs than this configuration expects: newly skipped {sorted(actual - expected)}, "
        f"no longer skipped {sorted(expected - actual)}\n\n{run.output}"
    )
    assert run.returncode == 0, run.output
