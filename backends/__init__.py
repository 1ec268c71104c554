"""Storage backends, looked up by name.

Built-in backends are imported lazily (``--backend lvm`` never imports the
rawdisk code); out-of-tree backends register a factory under the
``localcsi.backends`` entry-point group. A factory is called as
``factory(node_id=..., options=..., runner=...)`` and returns a Backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from backends.errors import InvalidArgument

if TYPE_CHECKING:
    from backends.base import Backend
    from backends.system.runner import Runner

BUILTIN: Mapping[str, str] = {
    "loopfile": "backends.loopfile:from_options",
    "lvm": "backends.lvm:from_options",
    "rawdisk": "backends.rawdisk:from_options",
}

Factory = Callable[..., "Backend"]


def available() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group="localcsi.backends"))
    return sorted(names)


def factory(name: str) -> Factory:
    target = BUILTIN.get(name)
    if target is not None:
        module, _, attr = target.partition(":")
        loaded: Factory = getattr(importlib.import_module(module), attr)
        return loaded
    for ep in entry_points(group="localcsi.backends"):
        if ep.name == name:
            plugin: Factory = ep.load()
            return plugin
    raise InvalidArgument(f"unknown backend {name!r}; available: {', '.join(available())}")


def create(name: str, *, node_id: str, options: Mapping[str, Any], runner: Runner) -> Backend:
    return factory(name)(node_id=node_id, options=options, runner=runner)
