"""hack/setup installs only when something changed.

The stamp logic runs for real, in a scratch copy of the script and pyproject.toml whose .venv, apt and dpkg
are stand-ins that record each call: so the test sees exactly when apt and pip would run. A last test runs the
real script twice on this tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "hack/setup"

FAKE_PYTHON = """#!/bin/sh
# the virtualenv's python: prints a version, records pip runs
if [ "$1" = "-I" ]; then echo "${FAKE_PYTHON_VERSION:-3.11.7 (fake)}"; exit 0; fi
echo "python $*" >>"$CALLS"
"""
FAKE_LOCALCSI = '#!/bin/sh\necho "localcsi 0.0.0"\n'
FAKE_DPKG_QUERY = '#!/bin/sh\necho "dpkg-query $*" >>"$CALLS"\nprintf "install ok installed"\n'
FAKE_APT_GET = '#!/bin/sh\necho "apt-get $*" >>"$CALLS"\n'


class Scratch:
    """A copy of hack/setup and pyproject.toml with a stand-in .venv, dpkg-query and apt-get."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls = root / "calls"
        (root / "hack").mkdir()
        shutil.copy2(SETUP, root / "hack/setup")
        shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
        for path, text in {
            ".venv/bin/python": FAKE_PYTHON,
            ".venv/bin/localcsi": FAKE_LOCALCSI,
            "fakebin/dpkg-query": FAKE_DPKG_QUERY,
            "fakebin/apt-get": FAKE_APT_GET,
        }.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
            (root / path).chmod(0o755)

    def run(self, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        """Run the copy; returns its result and the apt, dpkg and pip calls it made."""
        self.calls.unlink(missing_ok=True)
        path = f"{self.root / 'fakebin'}:{os.environ['PATH']}"
        result = subprocess.run(
            [str(self.root / "hack/setup"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PATH": path, "CALLS": str(self.calls), **env},
            check=False,
        )
        calls = self.calls.read_text().splitlines() if self.calls.exists() else []
        return result, calls


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    return Scratch(tmp_path)


def pip_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("python -m pip install -e")]


def test_first_run_installs_and_second_run_does_nothing_quietly(scratch: Scratch) -> None:
    first, calls = scratch.run()
    assert first.returncode == 0, first.stderr
    assert pip_installs(calls) == ["python -m pip install -e ."]
    assert any(c.startswith("dpkg-query") for c in calls)
    assert "setup: installing . into .venv" in first.stdout
    second, calls = scratch.run()
    assert second.returncode == 0, second.stderr
    assert calls == []  # neither dpkg nor apt nor pip
    assert second.stdout == second.stderr == ""


def test_a_changed_pyproject_reinstalls(scratch: Scratch) -> None:
    scratch.run()
    pyproject = scratch.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"loguru>=0.7,<0.8"', '"loguru>=0.7.2,<0.8"'))
    result, calls = scratch.run()
    assert pip_installs(calls) == ["python -m pip install -e ."], result.stdout
    assert scratch.run()[1] == []


def test_another_python_reinstalls(scratch: Scratch) -> None:
    scratch.run()
    assert pip_installs(scratch.run(FAKE_PYTHON_VERSION="3.13.1 (fake)")[1]) == ["python -m pip install -e ."]


def test_a_new_release_tag_reinstalls(scratch: Scratch) -> None:
    """The package's version comes from the newest tag: a new tag is a new version to install."""
    git = ["git", "-C", str(scratch.root), "-c", "user.name=t", "-c", "user.email=t@localcsi.test"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    scratch.run()
    assert scratch.run()[1] == []
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "two"], check=True)
    assert scratch.run()[1] == []  # a commit alone does not reinstall
    subprocess.run([*git, "tag", "v0.2.0"], check=True)
    assert pip_installs(scratch.run()[1]) == ["python -m pip install -e ."]


def test_levels_each_have_their_stamp_and_dev_covers_the_levels_below(scratch: Scratch) -> None:
    assert pip_installs(scratch.run()[1]) == ["python -m pip install -e ."]
    result, calls = scratch.run("--host-dev")
    assert pip_installs(calls) == ["python -m pip install -e .[dev]"], result.stdout
    assert "qemu-system-x86" not in " ".join(calls)  # the host lanes' tools, not the kernel lane's
    result, calls = scratch.run("--dev")
    assert any("qemu-system-x86" in c for c in calls if c.startswith("dpkg-query"))
    for level in ((), ("--host-dev",), ("--dev",)):
        assert scratch.run(*level)[1] == [], level


def test_check_says_why_and_installs_nothing(scratch: Scratch) -> None:
    result, calls = scratch.run("--check")
    assert result.returncode == 1
    assert "runtime would install: never installed at level runtime" in result.stderr
    assert calls == []
    scratch.run()
    result, calls = scratch.run("--check")
    assert (result.returncode, calls, result.stderr) == (0, [], "")


def test_missing_packages_are_installed_with_apt(scratch: Scratch) -> None:
    (scratch.root / "fakebin/dpkg-query").write_text(
        '#!/bin/sh\necho "dpkg-query $*" >>"$CALLS"\n[ "$3" = xfsprogs ] && exit 1\nprintf "install ok installed"\n'
    )
    result, calls = scratch.run()
    assert "apt-get install -y -qq --no-install-recommends xfsprogs" in calls, calls
    assert "setup: installing xfsprogs" in result.stdout


def test_the_real_setup_run_twice_installs_nothing_the_second_time() -> None:
    """On this tree: after one run (hack/test ran one before pytest), the next is silent and quick."""
    if subprocess.run([str(SETUP), "--check"], capture_output=True, check=False, timeout=60).returncode != 0:
        subprocess.run([str(SETUP)], capture_output=True, check=True, timeout=1200)
    log = ROOT / ".venv/setup.log"
    before = log.stat().st_mtime_ns if log.exists() else None
    start = time.monotonic()
    result = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert (log.stat().st_mtime_ns if log.exists() else None) == before  # pip did not run
    assert elapsed < 2, f"an up-to-date hack/setup took {elapsed:.2f}s"
