"""What a release attaches: hack/render-release renders one manifest per backend overlay with the
registry-qualified image, each validates, and `kubectl apply --dry-run=client -f FILE` accepts it.

There is no cluster here, so kubectl talks to tests/deploy/apiserver.py: discovery for the kinds in the file,
the OpenAPI v2 document kubectl validates against on the client side, and 404 for every object.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.apiserver import FakeApiServer
from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()
SCRIPT = ROOT / "hack/render-release"
VERSION = "v0.1.0"  # a CHANGELOG section exists for it
IMAGE = "ghcr.io/example/localcsi"
CRD_SCHEMAS = sorted((ROOT / "deploy/schemas").glob("*.json"))


def render_release(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release")
    result = render_release(VERSION, IMAGE, str(out))
    assert result.returncode == 0, result.stderr
    assert "4 rendered files, 0 problems" in result.stderr  # a manifest per backend, and the pools one
    return out


def manifests(release: Path) -> list[Path]:
    return sorted(release.glob("localcsi-*.yaml"))


def load(path: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = cm.parse_stream(path.read_text())
    return docs


def dry_run(path: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``kubectl apply --dry-run=client -f path`` against a stand-in API server for the file's kinds."""
    with FakeApiServer(load(path), CRD_SCHEMAS) as server:
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        result = subprocess.run(
            [cm.find_tool("kubectl"), "--kubeconfig", str(kubeconfig), "apply", "--dry-run=client", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return result, list(server.requests)


def test_one_manifest_per_backend_overlay(release: Path) -> None:
    overlays = {p.name for p in (ROOT / "deploy/overlays").iterdir() if (p / "kustomization.yaml").is_file()}
    assert {p.name for p in manifests(release)} == {f"localcsi-{o}.yaml" for o in overlays}


def test_the_driver_runs_the_registry_qualified_release_image(release: Path) -> None:
    for path in manifests(release):
        docs = load(path)
        assert cm.check_driver_image(docs, f"{IMAGE}:{VERSION}") == []
        assert {c.name for c in cm.driver_containers(docs)} == {"localcsi"}
        assert cm.check_images(docs) == []  # the sidecars keep their pins


def test_each_manifest_validates_and_is_consistent(release: Path) -> None:
    for path in manifests(release):
        assert cm.check_rendered(path, f"{IMAGE}:{VERSION}") == []


@pytest.mark.parametrize("backend", cm.BACKENDS)
def test_kubectl_apply_dry_run_client_accepts_each_manifest(release: Path, backend: str, tmp_path: Path) -> None:
    path = release / f"localcsi-{backend}.yaml"
    result, requests = dry_run(path, tmp_path)
    assert result.returncode == 0, result.stderr
    created = [line for line in result.stdout.splitlines() if line.endswith(" created (dry run)")]
    assert len(created) == len(load(path)), result.stdout
    assert "GET /openapi/v2" in requests  # validated against the schemas, not with --validate=false
    assert "GET /apis/apps/v1/namespaces/localcsi/daemonsets/localcsi-node" in requests


def test_kubectl_dry_run_here_rejects_what_a_cluster_would(release: Path, tmp_path: Path) -> None:
    """The stand-in is no rubber stamp: kubectl's own validation finds unknown fields and wrong types."""
    docs = load(release / "localcsi-loopfile.yaml")
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostNetwrk"] = True
    broken = tmp_path / "localcsi-loopfile.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    result, _ = dry_run(broken, tmp_path)
    assert result.returncode != 0
    assert 'unknown field "hostNetwrk"' in result.stderr
    vsc = next(d for d in docs if d["kind"] == "VolumeSnapshotClass")
    daemonset["spec"]["template"]["spec"].pop("hostNetwrk")
    vsc["parameter"] = {}
    broken.write_text(yaml.safe_dump_all(docs))
    result, _ = dry_run(broken, tmp_path)
    assert 'unknown field "parameter"' in result.stderr  # CRD kinds too, from deploy/schemas


def test_release_notes_are_the_changelog_section(release: Path) -> None:
    notes = (release / "release-notes.md").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    section = changelog.split(f"## [{VERSION.removeprefix('v')}]", 1)[1]
    assert notes.split("\n", 1)[1].strip() in section
    assert "## [" not in notes


@pytest.mark.parametrize(
    ("version", "image", "complaint"),
    [
        ("0.1.0", IMAGE, "VERSION must be a release tag"),
        (VERSION, "localcsi", "IMAGE must be registry-qualified"),
        (VERSION, f"{IMAGE}:v0.1.0", "IMAGE must be registry-qualified and untagged"),
        ("v99.0.0", IMAGE, "CHANGELOG.md has no section [99.0.0]"),
    ],
)
def test_render_release_refuses_what_it_cannot_release(
    version: str, image: str, complaint: str, tmp_path: Path
) -> None:
    result = render_release(version, image, str(tmp_path))
    assert result.returncode != 0
    assert complaint in result.stderr
    assert not list(tmp_path.glob("localcsi-*.yaml"))


def test_deploy_names_the_image_render_release_replaces() -> None:
    base = yaml.safe_load((ROOT / "deploy/base/kustomization.yaml").read_text())
    driver = next(i for i in base["images"] if i["name"].endswith("/localcsi"))
    assert f"BASE_IMAGE={driver['name']}\n" in SCRIPT.read_text()
    for backend in cm.BACKENDS:
        docs = cm.render(cm.Target(ROOT / "deploy/overlays" / backend))
        assert cm.check_driver_image(docs, f"{driver['name']}:{driver['newTag']}") == []
        assert driver["name"].startswith("ghcr.io/")


def test_check_rendered_catches_another_image(release: Path) -> None:
    errors = cm.check_rendered(release / "localcsi-lvm.yaml", "ghcr.io/example/localcsi:v9.9.9")
    assert len(errors) == 2  # the node DaemonSet and the controller Deployment
    assert all("want 'ghcr.io/example/localcsi:v9.9.9'" in e for e in errors)


def workflow_steps() -> Iterator[dict[str, Any]]:
    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yaml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}
    yield from workflow["jobs"]["release"]["steps"]


def test_release_workflow_builds_both_architectures_and_attaches_the_rendered_manifests() -> None:
    steps = list(workflow_steps())
    uses = [str(s.get("uses", "")) for s in steps]
    runs = "\n".join(str(s.get("run", "")) for s in steps)
    assert any(u.startswith("docker/setup-qemu-action@") for u in uses)
    assert any(u.startswith("docker/setup-buildx-action@") for u in uses)
    build = next(s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["file"] == "Containerfile"
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert build["with"]["tags"] == "${{ steps.names.outputs.image }}:${{ github.ref_name }}"
    assert "VERSION=${{ steps.names.outputs.version }}" in build["with"]["build-args"]
    assert 'echo "image=ghcr.io/${owner}/localcsi"' in runs
    assert 'hack/render-release "$TAG" "${{ steps.names.outputs.image }}" dist' in runs
    assert "dist/localcsi-*.yaml" in runs and "--notes-file dist/release-notes.md" in runs
    # nothing is pushed before the manifests rendered and validated
    assert runs.index("hack/render-release") < runs.index("gh release create")
    render = next(i for i, s in enumerate(steps) if "hack/render-release" in str(s.get("run", "")))
    assert render < steps.index(build)
