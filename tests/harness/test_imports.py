"""What the end-to-end harnesses may import: the protocol, the public id helpers and themselves, in one direction.

e2e/ drives the driver the way Kubernetes does, through its socket: ``csi.gen`` (the protocol) and
``backends.ids`` (which id a name gets) are all it may take from the project; nothing under ``e2e/``
imports the tests. Every import counts, also one inside a function (that is how an import circle hides).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "e2e"
#: Project packages e2e may use: the generated protocol and the public id helpers.
ALLOWED = ("csi.gen", "backends.ids")
PROJECT = ("csi", "backends", "tests")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(E2E.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path`` (module ``name``), relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            yield node.lineno, base
            for alias in node.names:  # ``from e2e.sim import host`` imports the module e2e.sim.host
                yield node.lineno, f"{base}.{alias.name}"


def test_e2e_imports_only_the_protocol_and_the_public_id_helpers() -> None:
    offending = []
    for name, path in modules().items():
        for line, module in imported(path, name):
            top = module.split(".")[0]
            if top in PROJECT and not any(module == a or module.startswith(a + ".") for a in ALLOWED):
                if module.rpartition(".")[0] in ALLOWED:  # ``from backends.ids import volume_id_for``
                    continue
                offending.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert offending == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from backends.base import Volume\n    from backends.ids import volume_id_for\n")
    assert [m for _, m in imported(probe, "e2e.probe") if m.startswith("backends")] == [
        "backends.base", "backends.base.Volume", "backends.ids", "backends.ids.volume_id_for"]


def test_e2e_modules_import_each_other_in_one_direction() -> None:
    known = modules()
    graph = {name: {m for _, m in imported(path, name) if m in known and m != name} for name, path in known.items()}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycles.append([*trail[trail.index(name):], name])
            return
        for target in sorted(graph[name]):
            visit(target, [*trail, name])

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []
