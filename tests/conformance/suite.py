"""Runs e2e/conformance in a child pytest against an endpoint and reads its JUnit report."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SUITE_DIR = REPO_ROOT / "e2e" / "conformance"
#: pytest's ``-rs`` summary line: ``SKIPPED [3] e2e/conformance/harness.py:52: <reason>``.
_SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] [^\n]*?:\d+: (.*)$", re.MULTILINE)
#: Skips each run may have, and why: capabilities the backend does not advertise, an access type the run is not.
NEEDS_MOUNT = "suite runs with block access; this spec needs mount"
NO_CONTROLLER_EXPANSION = "controller capability EXPAND_VOLUME not advertised"
NO_NODE_EXPANSION = "node capability EXPAND_VOLUME not advertised"


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    tests: int
    failures: int
    errors: int
    skipped: int
    failed_specs: tuple[str, ...]

    def skip_reasons(self) -> dict[str, int]:
        """How many specs were skipped for each reason (from pytest's ``-rs`` summary)."""
        reasons: dict[str, int] = {}
        for count, reason in _SKIP_LINE.findall(self.output):
            reasons[reason.strip()] = reasons.get(reason.strip(), 0) + int(count)
        return reasons

    def unexpected_skips(self, allowed: Mapping[str, int]) -> list[str]:
        """Skips not explained by ``allowed`` (reason -> at most that many specs): a capability the driver stopped
        advertising shows here, so it fails the run instead of hiding in the skip count."""
        wrong = [f"{n} skipped: {reason}" for reason, n in self.skip_reasons().items() if n > allowed.get(reason, 0)]
        if self.skipped > sum(allowed.values()):
            wrong.append(f"{self.skipped} specs skipped, at most {sum(allowed.values())} expected")
        return wrong

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
    return SuiteRun(
        returncode=returncode,
        output=output,
        tests=int(suite.get("tests", "0")),
        failures=int(suite.get("failures", "0")),
        errors=int(suite.get("errors", "0")),
        skipped=int(suite.get("skipped", "0")),
        failed_specs=failed,
    )
