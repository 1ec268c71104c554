"""Small helpers shared by the kernel-lane tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    thinpool: str
    pvs: tuple[str, ...]
