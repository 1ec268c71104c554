"""The commands in hack/ as a newcomer meets them: executable as checked out, and on a fresh clone (no .venv
yet) the Python ones set the clone up (hack/setup --dev, as hack/test does) or say exactly what to run, never
``ModuleNotFoundError``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_script_in_hack_is_executable_in_git() -> None:
    listed = subprocess.run(["git", "ls-files", "-s", "hack"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    scripts = []
    for line in listed:
        mode, _, _, path = line.split(maxsplit=3)
        if (REPO / path).read_bytes().startswith(b"#!"):
            scripts.append(path)
            assert mode == "100755", f"{path} is not executable in git ({mode}): `git update-index --chmod=+x {path}`"
    assert "hack/kind-e2e" in scripts


def fresh_clone(tmp_path: Path, setup: str) -> Path:
    """A clone without .venv whose hack/setup is ``setup`` (a shell body), the code linked in."""
    clone = tmp_path / "clone"
    (clone / "hack" / "lib").mkdir(parents=True)
    for script in ("reliability", "e2e-sim"):
        shutil.copy2(REPO / "hack" / script, clone / "hack" / script)
    shutil.copy2(REPO / "hack" / "lib" / "devenv.py", clone / "hack" / "lib" / "devenv.py")
    for package in ("backends", "csi", "e2e"):
        (clone / package).symlink_to(REPO / package)
    (clone / "hack" / "setup").write_text(f"#!/bin/sh\necho \"setup $*\"\n{setup}\n")
    (clone / "hack" / "setup").chmod(0o755)
    return clone


@pytest.mark.root
@pytest.mark.parametrize("command", [["hack/e2e-sim", "--list"], ["hack/reliability", "--help"]])
def test_a_fresh_clone_sets_itself_up_first(tmp_path: Path, command: list[str]) -> None:
    clone = fresh_clone(tmp_path, f"ln -s {REPO / '.venv'} .venv")
    done = subprocess.run(command, cwd=clone, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert "running hack/setup --dev first" in done.stderr
    assert "setup --dev" in done.stdout
    assert "ModuleNotFoundError" not in done.stderr


@pytest.mark.root
def test_a_setup_that_fails_says_what_to_run(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path, "exit 1")
    done = subprocess.run(["hack/reliability", "--quick"], cwd=clone, capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 2
    assert "run `hack/setup --dev` again, then hack/reliability" in done.stderr
    assert "Traceback" not in done.stderr
