"""The tests mirror the source: every module of the driver (``csi/``, its CLI and its benchmark) has a namesake test.

``csi/locks.py`` is tested in ``tests/csi/test_locks.py``, ``csi/cli/serve.py`` in ``tests/csi/cli/test_serve.py``.
Package markers (``__init__``, ``__main__``) and the generated protocol code (tested through ``test_proto.py``)
have none. A new module without its test fails here.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXEMPT = {"__init__.py", "__main__.py"}


def driver_modules() -> list[Path]:
    return sorted(p.relative_to(REPO) for p in (REPO / "csi").rglob("*.py")
                  if p.name not in EXEMPT and "gen" not in p.relative_to(REPO).parts)


def namesake(module: Path) -> Path:
    return Path("tests", *module.parent.parts, f"test_{module.name}")


def test_every_driver_module_has_its_namesake_test() -> None:
    modules = driver_modules()
    assert Path("csi/locks.py") in modules and Path("csi/bench/phases.py") in modules
    assert [str(m) for m in modules if not (REPO / namesake(m)).is_file()] == []


def test_every_namesake_test_names_a_module() -> None:
    """The other way round, for the mirrored directories: a test named after a module that is gone is stale."""
    wanted = {namesake(m) for m in driver_modules()}
    helpers = {"test_proto.py"}  # the protocol's wire format: csi/proto/csi.proto and the generated csi/gen/
    found = {p.relative_to(REPO) for d in ("tests/csi", "tests/csi/cli", "tests/csi/bench")
             for p in (REPO / d).glob("test_*.py")}
    assert sorted(str(p) for p in found - wanted if p.name not in helpers) == []
