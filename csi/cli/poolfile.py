"""The pools file (``localcsi serve --config FILE``): several named storage pools for one driver.

YAML (``.yaml``/``.yml``) or TOML (``.toml``)::

    default: bulk            # the pool of volumes whose StorageClass names none (optional with one pool)
    pools:
      fast:
        backend: lvm
        vg: nvme
        thinpool: tp
      bulk:
        backend: loopfile
        directory: /mnt/hdd/localcsi
      disks:
        backend: rawdisk
        devices: ["/dev/disk/by-id/ata-*"]

A pool's keys other than ``backend`` are its backend's settings, by field name (``localcsi serve --help`` lists
each backend's flags; the setting is the flag without the backend prefix, dashes as underscores). Every problem
is reported with the file, the pool and the field, before anything touches storage.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import backends
from backends import errors
from backends.options import OptionError
from backends.pools import PoolSpec, default_pool


class PoolFileError(ValueError):
    """The pools file cannot be used; the message names the file (and the pool and field when it can)."""


def load(path: str) -> tuple[PoolSpec, ...]:
    """The pools ``path`` declares, validated."""
    data = _parse(Path(path))
    return pools_from(data, path)


def _parse(path: Path) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PoolFileError(f"{path}: cannot read the pools file: {exc.strerror}") from exc
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PoolFileError(f"{path}: not valid TOML: {exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PoolFileError(f"{path}: not valid YAML: {exc}") from exc
    raise PoolFileError(f"{path}: the pools file must end in .yaml, .yml or .toml")


def pools_from(data: object, where: str) -> tuple[PoolSpec, ...]:
    if not isinstance(data, Mapping):
        raise PoolFileError(f"{where}: expected a mapping with 'pools' (and optionally 'default')")
    unknown = sorted(set(data) - {"pools", "default"})
    if unknown:
        raise PoolFileError(f"{where}: unknown key {unknown[0]!r} (expected 'pools' and 'default')")
    declared = data.get("pools")
    if not isinstance(declared, Mapping) or not declared:
        raise PoolFileError(f"{where}: 'pools' must map pool names to their settings")
    default = data.get("default", "")
    if not isinstance(default, str):
        raise PoolFileError(f"{where}: default: must be a pool name")
    if default and default not in declared:
        raise PoolFileError(f"{where}: default: no pool is named {default!r} (pools: {', '.join(declared)})")
    specs = tuple(_pool(str(name), settings, where, default == name) for name, settings in declared.items())
    try:
        default_pool(specs)
    except ValueError as exc:
        raise PoolFileError(f"{where}: {exc}") from exc
    return specs


def _pool(name: str, settings: Any, where: str, is_default: bool) -> PoolSpec:
    here = f"{where}: pool {name!r}"
    if not isinstance(settings, Mapping):
        raise PoolFileError(f"{here}: expected a mapping of settings")
    values = dict(settings)
    kind = values.pop("backend", None)
    if not isinstance(kind, str) or not kind:
        raise PoolFileError(f"{here}: backend: required ({', '.join(backends.available())})")
    try:
        options = backends.options_class(kind).from_mapping(values)
        return PoolSpec(name, options, is_default)
    except errors.InvalidArgument as exc:
        raise PoolFileError(f"{here}: backend: {exc.message}") from exc
    except (OptionError, ValueError) as exc:
        raise PoolFileError(f"{here}: {exc}") from exc
