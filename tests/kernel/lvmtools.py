"""Small helpers shared by the kernel-lane tests."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


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


@contextlib.contextmanager
def volume_group(scratch: Path, pv_bytes: int, thinpool_bytes: int) -> Iterator[VolumeGroup]:
    """A volume group on two sparse loop-backed PVs whose images live in ``scratch``, with a thin pool ``pool``;
    removed with its loop devices and images afterwards."""
    loops: list[str] = []
    name = f"lcsi{uuid.uuid4().hex[:8]}"
    try:
        for index in range(2):
            image = scratch / f"pv{index}.img"
            with image.open("wb") as handle:
                handle.truncate(pv_bytes)
            loops.append(sh("losetup", "--find", "--show", str(image)).strip())
        sh("pvcreate", "-q", *loops)
        sh("vgcreate", "-q", name, *loops)
        sh("lvcreate", "-q", "--type", "thin-pool", "-L", f"{thinpool_bytes}b", "-n", "pool", name)
        yield VolumeGroup(name, "pool", tuple(loops))
    finally:
        subprocess.run(["vgremove", "-q", "-f", name], capture_output=True, check=False, timeout=120)
        for loop in loops:
            subprocess.run(["pvremove", "-q", "-f", loop], capture_output=True, check=False, timeout=60)
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False, timeout=60)
        for image in scratch.glob("pv*.img"):
            image.unlink()
