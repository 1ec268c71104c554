"""docs/quickstart.md and docs/operations.md: every name their commands use is one our manifests and the driver
really have, and the quickstart's objects pass `kubectl apply --dry-run=client` (tests/deploy/apiserver.py).

A renamed namespace, label, container, class, port, flag, metric or path fails here, not in a reader's shell.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from csi.cli.main import build_parser
from tests.deploy.apiserver import FakeApiServer
from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()
DOCS = [ROOT / "docs/quickstart.md", ROOT / "docs/operations.md"]
HEREDOC = re.compile(r"kubectl apply -f - <<'EOF'\n(.*?)\nEOF\n", re.DOTALL)
SHELL = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def shell_text(doc: Path) -> str:
    """The docs' shell blocks, heredoc bodies left out, line continuations joined."""
    text = "\n".join(SHELL.findall(doc.read_text()))
    return HEREDOC.sub("", text).replace("\\\n", " ")


def all_shell() -> str:
    return "\n".join(shell_text(d) for d in DOCS)


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    return tuple(d for b in cm.BACKENDS for d in cm.render(cm.Target(ROOT / "deploy/overlays" / b)))


def names(kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in rendered() if d["kind"] == kind}


def quickstart_objects() -> list[dict[str, Any]]:
    [manifest] = HEREDOC.findall((ROOT / "docs/quickstart.md").read_text())
    docs: list[dict[str, Any]] = cm.parse_stream(manifest)
    return docs


def test_readme_links_the_operator_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS:
        assert doc.is_file()
        assert f"({doc.relative_to(ROOT)})" in readme


def test_quickstart_objects_validate_and_use_our_class(tmp_path: Path) -> None:
    objects = quickstart_objects()
    assert [o["kind"] for o in objects] == ["PersistentVolumeClaim", "Pod"]
    assert [e for o in objects for e in cm.schema_errors(o)] == []
    claim, pod = objects
    assert claim["spec"]["storageClassName"] in names("StorageClass")
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    manifest = tmp_path / "demo.yaml"
    manifest.write_text(HEREDOC.findall((ROOT / "docs/quickstart.md").read_text())[0])
    with FakeApiServer(objects, []) as server:
        result = subprocess.run(
            [cm.find_tool("kubectl"), "--kubeconfig", str(server.kubeconfig(tmp_path / "kc")), "apply",
             "--dry-run=client", "-f", str(manifest)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "persistentvolumeclaim/demo created (dry run)" in result.stdout


def test_namespaces_are_ours() -> None:
    used = set(re.findall(r"(?:-n|--namespace) ([A-Za-z0-9_-]+)", all_shell()))
    assert used - {"NAMESPACE"} <= {"localcsi", "kube-system"}
    assert {d["metadata"].get("namespace") for d in rendered() if d["kind"] == "DaemonSet"} == {"localcsi"}


def test_labels_containers_and_workloads_exist() -> None:
    text = all_shell()
    pod_labels = {
        f"{k}={v}"
        for d in rendered()
        if d["kind"] in ("DaemonSet", "Deployment")
        for k, v in d["spec"]["template"]["metadata"]["labels"].items()
    }
    assert set(re.findall(r"-l (\S+)", text)) <= pod_labels
    container_names = {c.name for c in cm.containers(list(rendered()))}
    assert set(re.findall(r"-c ([a-z-]+)", text)) <= container_names
    workloads = {f"daemonset/{n}" for n in names("DaemonSet")} | {f"deployment/{n}" for n in names("Deployment")}
    assert set(re.findall(r"\b((?:daemonset|deployment)/localcsi-[a-z]+)", text)) <= workloads


def test_every_localcsi_name_is_an_object_or_a_release_file() -> None:
    text = "\n".join(d.read_text() for d in DOCS)
    known = {d["metadata"]["name"] for d in rendered()} | {"localcsi-dashboard"}
    known |= {f"localcsi-{b}.yaml" for b in cm.BACKENDS} | {"localcsi-<backend>"}
    for name in set(re.findall(r"\blocalcsi-[a-z<>]+(?:\.yaml)?", text)):
        assert name in known or name.removesuffix(".yaml") in known, name


def test_paths_in_the_repository_exist() -> None:
    for path in set(re.findall(r"\b(deploy/[A-Za-z0-9_./-]+)", "\n".join(d.read_text() for d in DOCS))):
        assert (ROOT / path.rstrip(".")).exists(), path


def test_the_driver_facts_the_commands_rely_on() -> None:
    text = "\n".join(d.read_text() for d in DOCS)
    node = next(c for c in cm.driver_containers(list(rendered())) if c.flag("mode") == "all")
    assert f"--endpoint {node.env_value('CSI_ENDPOINT')}" in text  # localcsi ctl inside the pod
    metrics_port = next(p["containerPort"] for p in node.spec["ports"] if p["name"] == "metrics")
    assert f"port-forward \"$POD\" {metrics_port}:{metrics_port}" in text
    loopfile = next(c for c in cm.driver_containers(cm.render(cm.Target(ROOT / "deploy/overlays/loopfile")))
                    if c.flag("mode") == "all")
    assert loopfile.flag("loopfile-dir") == "/var/lib/localcsi/volumes"
    assert "/var/lib/localcsi/volumes" in text
    backend_source = "\n".join(p.read_text() for p in (ROOT / "backends").rglob("*.py"))
    for fact in ("localcsi.dev/owner=localcsi", "c3ba621b-6086-40bf-945a-c109bf7cf0c5"):
        assert fact in text and fact in backend_source, fact


def test_ctl_subcommands_exist() -> None:
    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    choices = set(subcommands(subcommands(build_parser())["ctl"]))
    used = set(re.findall(r"localcsi ctl (?:--endpoint \S+ )?(?:-o \S+ )?([a-z]+)", all_shell()))
    assert used and used <= choices, used - choices


def test_metric_names_exist_in_the_driver(driver_metrics: dict[str, set[str]]) -> None:
    text = (ROOT / "docs/operations.md").read_text()
    for name in set(re.findall(r"\blocalcsi_[a-z_]+", text)):
        assert any(m.startswith(name) for m in driver_metrics), name
