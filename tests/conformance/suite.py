"""Runs e2e/conformance in a child pytest against an endpoint and reads its JUnit report."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SUITE_DIR = REPO_ROOT / "e2e" / "conformance"


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    tests: int
    failures: int
    errors: int
    skipped: int
    failed_specs: tuple[str, ...]

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
