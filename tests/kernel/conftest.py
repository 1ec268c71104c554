"""Fixtures for the kernel lane (tests marked ``kernel``, run by ``hack/vmtest``).

On the host these tests skip, naming the missing kernel feature. Inside the
lane (``LOCALCSI_VMTEST=1``) a missing feature is an error, never a skip.

``lvm_vg`` is one volume group per session on two sparse loop-backed PVs in
the guest's tmpfs, with a thin pool; it is removed (with its loop devices) at
the end. Tests remove the LVs they create.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.system.errors import CommandError
from backends.system.runner import ProcessRunner, Result, Runner
from e2e.sim.profiles import kernel_has_device_mapper
from tests.kernel.lvmtools import VolumeGroup, volume_group

IN_LANE = os.environ.get("LOCALCSI_VMTEST") == "1"
CAP_SYS_RESOURCE = 24
PV_BYTES = 3 * 1024**3
THINPOOL_BYTES = 2 * 1024**3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def missing_kernel_features() -> list[str]:
    missing = []
    if not kernel_has_device_mapper():  # not /dev/mapper/control: LVM's tools make that node on any kernel
        missing.append("device-mapper (no 'device-mapper' in /proc/misc)")
    cap_eff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap_eff = int(line.split()[1], 16)
    if not cap_eff & (1 << CAP_SYS_RESOURCE):
        missing.append("CAP_SYS_RESOURCE (ext4 online resize)")
    return missing


def require_kernel_features() -> None:
    """Skip on a host without the features; fail (never skip) inside the lane."""
    missing = missing_kernel_features()
    if not missing:
        return
    message = "this kernel lacks " + ", ".join(missing)
    if IN_LANE:
        pytest.fail(f"kernel lane broken: {message}")
    pytest.skip(f"{message}; run it in the kernel lane: hack/vmtest")


@pytest.fixture(autouse=True)
def _kernel_features() -> None:
    require_kernel_features()


@pytest.fixture(scope="session")
def lvm_vg() -> Iterator[VolumeGroup]:
    require_kernel_features()
    scratch = Path(tempfile.mkdtemp(prefix="lvm-pvs-"))
    try:
        with volume_group(scratch, PV_BYTES, THINPOOL_BYTES) as vg:
            yield vg
    finally:
        scratch.rmdir()


class RecordingRunner:
    """Runs commands for real and appends each (argv, returncode, stdout, stderr) to a JSON-lines file.

    Used to capture golden LVM outputs for the host-side unit tests:
    ``LOCALCSI_LVM_RECORD=1 VMTEST_OUT_DIR=/tmp/rec hack/vmtest -m kernel tests/kernel``.
    """

    def __init__(self, inner: ProcessRunner, path: Path) -> None:
        self.inner = inner
        self.path = path

    async def run(self, argv: Sequence[str], *, check: bool = True, **options: Any) -> Result:
        result = await self.inner.run(argv, check=False, **options)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(
                json.dumps(
                    {
                        "argv": list(argv),
                        "returncode": result.returncode,
                        "stdout": result.stdout,
                        "stderr": result.stderr,
                    }
                )
                + "\n"
            )
        if check and result.returncode != 0:
            raise CommandError(result.argv, result.returncode, result.stderr, stdout=result.stdout)
        return result


@pytest.fixture
def runner(request: pytest.FixtureRequest) -> Runner:
    out = os.environ.get("VMTEST_OUT")
    if os.environ.get("LOCALCSI_LVM_RECORD") == "1" and out:
        name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
        return RecordingRunner(ProcessRunner(), Path(out) / "lvm-record" / f"{name}.jsonl")
    return ProcessRunner()
