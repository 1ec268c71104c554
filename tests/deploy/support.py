"""Loads hack/check-manifests (a script without a .py suffix) as a module for the tests."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "check-manifests"
MODULE_NAME = "localcsi_check_manifests"


def check_manifests() -> ModuleType:
    """The check-manifests script as a module (imported once, then cached in sys.modules)."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    loader = importlib.machinery.SourceFileLoader(MODULE_NAME, str(SCRIPT))
    spec = importlib.util.spec_from_loader(MODULE_NAME, loader)
    if spec is None:
        raise ImportError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    loader.exec_module(module)
    return module
