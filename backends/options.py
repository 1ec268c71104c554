"""Typed, frozen settings of one backend instance, filled from command-line flags or a pools file.

Each backend declares one frozen dataclass deriving from :class:`Options`; every field is declared with
:func:`option`, which names its flag, its help text and (optionally) an environment variable that supplies
its default. From that one declaration come the flags (:meth:`Options.add_arguments`), the value from parsed
flags (:meth:`Options.from_arguments`) and the value from a mapping (:meth:`Options.from_mapping`, a pool in a
configuration file), so the three can never disagree. Field types are ``str``, ``int``, ``float``, ``bool`` and
``tuple[str, ...]`` (a repeatable flag, a list in a file). A class checks its own invariants in
:meth:`Options.validate`, raising :class:`OptionError` naming the field.

The class also says what its backend can do with these settings (:meth:`Options.features`) and builds the
backend (:meth:`Options.open`, which imports the backend's code only then): a controller-mode instance, which
holds no storage, advertises the same features as the node instances from the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self, get_type_hints

if TYPE_CHECKING:
    from backends.base import Backend, Features
    from backends.system.runner import Runner


class OptionError(ValueError):
    """A backend setting that cannot be used; the message names the field (and the flag when there is one)."""


def option(default: Any, *, flag: str, help: str, env: str = "", metavar: str = "") -> Any:
    """Declare one field of an :class:`Options` dataclass.

    ``flag`` is the command-line spelling (``--loopfile-dir``); ``env`` names an environment variable whose
    value, when set, replaces ``default`` for the flag (read when the flags are built, never at import).
    """
    if isinstance(default, list | dict | set):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"flag": flag, "help": help, "env": env, "metavar": metavar})


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every backend's settings (a frozen dataclass of :func:`option` fields)."""

    #: The backend's registry name (``--backend`` value and ``backend:`` in a pools file).
    kind: ClassVar[str] = ""

    # -- what a subclass provides ------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`OptionError` for settings the backend cannot run with."""

    def features(self) -> Features:
        raise NotImplementedError

    def open(self, node_id: str, runner: Runner) -> Backend:
        """Build the backend these settings describe (its start() checks the storage)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming the storage, for logs and ``ctl info``."""
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))

    # -- derived from the field declarations --------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            kind = hints[f.name]
            default = f.default
            if meta["env"] and os.environ.get(meta["env"]):
                default = _parse_text(kind, os.environ[meta["env"]], meta["flag"])
            help_text = meta["help"] + (f" [${meta['env']}]" if meta["env"] else "")
            extra: dict[str, Any] = {"metavar": meta["metavar"] or f.name.upper()}
            if kind is bool:
                parser.add_argument(meta["flag"], dest=_dest(cls, f), action="store_true", default=default,
                                    help=help_text)
            elif kind == tuple[str, ...]:
                parser.add_argument(meta["flag"], dest=_dest(cls, f), action="append", default=None,
                                    help=help_text + " (repeatable)", **extra)
            else:
                shown = " (default: %(default)s)" if default not in ("", None) else ""
                parser.add_argument(meta["flag"], dest=_dest(cls, f), type=kind, default=default,
                                    help=help_text + shown, **extra)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Self:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, _dest(cls, f))
            if value is None:
                value = f.default
            values[f.name] = tuple(value) if isinstance(value, list) else value
        made = cls(**values)
        made.validate()
        return made

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Self:
        """Settings from a pools file: keys are the field names; unknown keys and wrong types are refused."""
        hints = get_type_hints(cls)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise OptionError(f"unknown setting {unknown[0]!r} for the {cls.kind} backend "
                              f"(known: {', '.join(sorted(names))})")
        converted = {key: _convert(hints[key], value, key) for key, value in values.items()}
        made = cls(**converted)
        made.validate()
        return made

    @classmethod
    def flag_of(cls, name: str) -> str:
        """The command-line flag of field ``name`` (for messages)."""
        return str(next(f.metadata["flag"] for f in dataclasses.fields(cls) if f.name == name))


def _dest(cls: type[Options], f: dataclasses.Field[Any]) -> str:
    return f"{cls.kind}__{f.name}"


def _parse_text(kind: Any, text: str, where: str) -> Any:
    if kind == tuple[str, ...]:
        return tuple(part for part in text.split(",") if part)
    return _convert(kind, text, where)


def _convert(kind: Any, value: object, where: str) -> Any:
    """``value`` as the field's type; a string is accepted for numbers and booleans (environment, YAML quirks)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise OptionError(f"{where} must be true or false, not {value!r}")
    if kind is int or kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise OptionError(f"{where} must be a number, not {value!r}")
        try:
            number = kind(value)
        except ValueError as exc:
            raise OptionError(f"{where} must be a number, not {value!r}") from exc
        return number
    if kind is str:
        if not isinstance(value, str):
            raise OptionError(f"{where} must be a string, not {value!r}")
        return value
    if kind == tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise OptionError(f"{where} must be a list of strings, not {value!r}")
        return tuple(value)
    raise TypeError(f"unsupported option type {kind!r} for {where}")
