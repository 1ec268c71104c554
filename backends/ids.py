"""Volume and snapshot ids: deterministic functions of the CSI names, safe as file and LV names.

These are the driver's public id helpers: tests and the end-to-end harnesses may use them (to know which id a
name gets, or whether a string is one of ours) without reaching into any backend.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

_VOLUME_ID = re.compile(r"^lcv-[0-9a-f]{32}$")
_SNAPSHOT_ID = re.compile(r"^lcs-[0-9a-f]{32}$")


def _digest(kind: str, name: str) -> str:
    return hashlib.blake2b(f"{kind}\0{name}".encode(), digest_size=16).hexdigest()


def volume_id_for(name: str) -> str:
    """The volume id for a CSI volume name: deterministic and a safe file name.

    The raw name never becomes a path or an LV name; retries of CreateVolume
    find their earlier work because the id is a pure function of the name.
    """
    return "lcv-" + _digest("volume", name)


def snapshot_id_for(name: str) -> str:
    return "lcs-" + _digest("snapshot", name)


def is_volume_id(value: str) -> bool:
    return bool(_VOLUME_ID.match(value))


def is_snapshot_id(value: str) -> bool:
    return bool(_SNAPSHOT_ID.match(value))


#: A pool's name: a DNS label of at most 32 characters, so it is safe in ids, metric labels and file names.
POOL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
#: Separates a backend's own id from the pool that holds it in the ids a driver with pools hands out.
POOL_SEPARATOR = "@"


def qualify(local_id: str, pool: str) -> str:
    """The id a driver with pools hands out for ``local_id`` of ``pool`` ("" pool: the id unchanged)."""
    return f"{local_id}{POOL_SEPARATOR}{pool}" if pool else local_id


def _split(value: str, is_local: Callable[[str], bool]) -> tuple[str, str] | None:
    local, sep, pool = value.partition(POOL_SEPARATOR)
    if not is_local(local) or (sep and not POOL_NAME.match(pool)):
        return None
    return local, pool


def split_volume_id(value: str) -> tuple[str, str] | None:
    """``(local id, pool)`` of one of our volume ids (pool "" when the id names none); None if not ours."""
    return _split(value, is_volume_id)


def split_snapshot_id(value: str) -> tuple[str, str] | None:
    """``(local id, pool)`` of one of our snapshot ids (pool "" when the id names none); None if not ours."""
    return _split(value, is_snapshot_id)


def is_driver_volume_id(value: str) -> bool:
    """Whether ``value`` is a volume id this driver may have handed out (with or without a pool)."""
    return split_volume_id(value) is not None


def is_driver_snapshot_id(value: str) -> bool:
    return split_snapshot_id(value) is not None
