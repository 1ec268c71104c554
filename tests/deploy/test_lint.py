"""shellcheck on every shell script under hack/ and e2e/kind/, hadolint on the Containerfile,
and the CI workflows and kind e2e suite at least parse and collect offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()


def test_shell_scripts_and_containerfile_pass_the_linters() -> None:
    assert cm.lint_errors() == []


def test_the_shell_script_list_covers_the_lane_scripts() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in cm.shell_scripts()}
    assert {"hack/image-test", "hack/kind-e2e", "hack/build-base-image", "hack/render-release"} <= names
    assert "hack/check-manifests" not in names  # python, checked by ruff and mypy


def test_shellcheck_reports_a_real_problem(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/bash\nrm -rf $1/*\n")
    errors = cm.run_linter([cm.find_tool("shellcheck"), str(script)])
    assert errors and "SC2086" in errors[0]


def test_hadolint_reports_a_real_problem(tmp_path: Path) -> None:
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text("FROM debian:bookworm-slim\nRUN cd /tmp && apt-get install -y curl\n")
    errors = cm.run_linter([cm.find_tool("hadolint"), "--failure-threshold=warning", str(containerfile)])
    assert errors and "DL3003" in errors[0]


def test_workflows_parse_and_run_the_kind_suite_per_backend() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/kind-e2e.yaml").read_text())
    job = workflow["jobs"]["kind-e2e"]
    assert set(job["strategy"]["matrix"]["backend"]) == set(cm.BACKENDS)
    assert any("hack/kind-e2e" in str(step.get("run", "")) for step in job["steps"])
    for path in sorted((ROOT / ".github/workflows").glob("*.y*ml")):
        assert "jobs" in yaml.safe_load(path.read_text()), path


def test_kind_suite_collects_offline() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "e2e/kind/tests"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_data_survives_pod_recreation" in result.stdout
