"""Fixtures for the kernel lane (tests marked ``kernel``, run by ``hack/vmtest``).

On the host these tests skip, naming the missing kernel feature. Inside the
lane (``LOCALCSI_VMTEST=1``) a missing feature is an error, never a skip.

``lvm_vg`` is one volume group per session on two sparse loop-backed PVs in
the guest's tmpfs, with a thin pool; it is removed (with its loop devices) at
the end. Tests remove the LVs they create.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_LANE = os.environ.get("LOCALCSI_VMTEST") == "1"
CAP_SYS_RESOURCE = 24
PV_BYTES = 3 * 1024**3
THINPOOL_BYTES = 2 * 1024**3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def missing_kernel_features() -> list[str]:
    missing = []
    if not Path("/dev/mapper/control").exists():
        missing.append("device-mapper (/dev/mapper/control)")
    cap_eff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap_eff = int(line.split()[1], 16)
    if not cap_eff & (1 << CAP_SYS_RESOURCE):
        missing.append("CAP_SYS_RESOURCE (ext4 online resize)")
    return missing


@pytest.fixture(autouse=True)
def _kernel_features() -> None:
    missing = missing_kernel_features()
    if not missing:
        return
    message = "this kernel lacks " + ", ".join(missing)
    if IN_LANE:
        pytest.fail(f"kernel lane broken: {message}")
    pytest.skip(f"{message}; run it in the kernel lane: hack/vmtest")


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


@pytest.fixture(scope="session")
def lvm_vg() -> Iterator[VolumeGroup]:
    if missing_kernel_features():
        pytest.skip("no device-mapper here")
    scratch = Path(tempfile.mkdtemp(prefix="lvm-pvs-"))
    loops: list[str] = []
    name = f"lcsi{uuid.uuid4().hex[:8]}"
    try:
        for index in range(2):
            image = scratch / f"pv{index}.img"
            with image.open("wb") as handle:
                handle.truncate(PV_BYTES)
            loops.append(sh("losetup", "--find", "--show", str(image)).strip())
        sh("pvcreate", "-q", *loops)
        sh("vgcreate", "-q", name, *loops)
        sh("lvcreate", "-q", "--type", "thin-pool", "-L", f"{THINPOOL_BYTES}b", "-n", "pool", name)
        yield VolumeGroup(name, "pool", tuple(loops))
    finally:
        subprocess.run(["vgremove", "-q", "-f", name], capture_output=True, check=False, timeout=120)
        for loop in loops:
            subprocess.run(["pvremove", "-q", "-f", loop], capture_output=True, check=False, timeout=60)
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False, timeout=60)
        for image in scratch.glob("*.img"):
            image.unlink()
        scratch.rmdir()
