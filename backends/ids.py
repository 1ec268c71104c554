"""Volume and snapshot ids: deterministic functions of the CSI names, safe as file and LV names.

These are the driver's public id helpers: tests and the end-to-end harnesses may use them (to know which id a
name gets, or whether a string is one of ours) without reaching into any backend.
"""

from __future__ import annotations

import hashlib
import re

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
