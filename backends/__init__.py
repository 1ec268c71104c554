"""Storage backends, looked up by name.

A backend is known by its settings class (:class:`backends.options.Options`):
it declares the backend's flags, its features and how to build it. The
built-in ones live in ``backends/<name>/options.py``, small modules that import
no backend code (``--backend lvm`` never imports the rawdisk code, and the CLI
can list every backend's flags cheaply); out-of-tree backends register their
settings class under the ``localcsi.backends`` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points

from backends.errors import InvalidArgument
from backends.options import Options

ENTRY_POINT_GROUP = "localcsi.backends"

BUILTIN: Mapping[str, str] = {
    "loopfile": "backends.loopfile.options:LoopfileOptions",
    "lvm": "backends.lvm.options:LvmOptions",
    "rawdisk": "backends.rawdisk.options:RawdiskOptions",
}


def _load(target: str) -> type[Options]:
    module, _, attr = target.partition(":")
    loaded = getattr(importlib.import_module(module), attr)
    return _checked(loaded, target)


def _checked(loaded: object, where: str) -> type[Options]:
    if not (isinstance(loaded, type) and issubclass(loaded, Options) and loaded.kind):
        raise InvalidArgument(f"{where} is not a backend settings class (a subclass of backends.options.Options)")
    return loaded


def available() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def options_class(name: str) -> type[Options]:
    """The settings class of backend ``name``; unknown names are InvalidArgument listing the known ones."""
    target = BUILTIN.get(name)
    if target is not None:
        return _load(target)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _checked(ep.load(), f"entry point {ep.value}")
    raise InvalidArgument(f"unknown backend {name!r}; available: {', '.join(available())}")


def all_options() -> list[type[Options]]:
    """Every known backend's settings class, built-in first (for the CLI's flags)."""
    return [options_class(name) for name in [*BUILTIN, *(n for n in available() if n not in BUILTIN)]]
