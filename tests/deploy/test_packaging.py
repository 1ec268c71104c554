"""The package's version comes from the git tag, its licence metadata is the SPDX form, and building it prints
no deprecation warnings about our own metadata.

Each test builds a wheel of this working tree (tracked and new files, as `git ls-files` sees them) in a scratch
directory, the way pip builds it for `pip install .`: in an isolated build environment from PyPI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

from tests.deploy.support import ROOT

BUILD_TIMEOUT_S = 300


def copy_tree(dest: Path) -> Path:
    """The working tree's files (what git would commit) without .git, as an image build context has them."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def git(tree: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@localcsi.test", *args],
        capture_output=True,
        check=True,
    )


def build_wheel(tree: Path, out: Path, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """``pip wheel`` the tree; returns the wheel and everything pip and the build backend printed."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env=env,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return next(out.glob("localcsi-*.whl")), output


def metadata(wheel: Path) -> tuple[dict[str, str], list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(archive.read(name).decode())
        return dict(headers.items()), archive.namelist()


def test_pyproject_declares_the_spdx_license_and_ships_the_license_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "version" in project["dynamic"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.slow
def test_a_tagged_commit_builds_the_tag_version_without_deprecation_warnings(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "src")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "release")
    git(tree, "tag", "v9.8.7")
    wheel, output = build_wheel(tree, tmp_path / "dist")
    headers, names = metadata(wheel)
    assert headers["Version"] == "9.8.7"
    assert headers["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "deprecat" not in output.lower(), output
    # one commit after the tag is a development version of the next patch release
    (tree / "README.md").write_text((tree / "README.md").read_text() + "\n")
    git(tree, "commit", "-q", "-am", "after the release")
    wheel, _ = build_wheel(tree, tmp_path / "dist-next")
    assert metadata(wheel)[0]["Version"].startswith("9.8.8.dev1+g")


@pytest.mark.slow
def test_a_tree_without_git_builds_the_fallback_or_the_version_it_is_given(tmp_path: Path) -> None:
    """The image build context has no .git (see .containerignore); the Containerfile passes VERSION through."""
    tree = copy_tree(tmp_path / "src")
    wheel, output = build_wheel(tree, tmp_path / "dist")
    assert metadata(wheel)[0]["Version"] == "0.0.0"
    assert "deprecat" not in output.lower(), output
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_LOCALCSI": "1.2.3"}
    wheel, _ = build_wheel(tree, tmp_path / "dist-pretend", env=env)
    assert metadata(wheel)[0]["Version"] == "1.2.3"


def test_the_image_build_passes_its_version_to_the_package_build() -> None:
    containerfile = (ROOT / "Containerfile").read_text()
    assert 'SETUPTOOLS_SCM_PRETEND_VERSION_FOR_LOCALCSI="${VERSION}"' in containerfile
    assert "COPY pyproject.toml README.md LICENSE ./" in containerfile
    for ignore in (".containerignore", ".dockerignore"):
        assert "!LICENSE" in (ROOT / ignore).read_text().splitlines(), ignore
