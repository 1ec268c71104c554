"""A real ``localcsi serve --backend lvm`` process for the kernel lane, and what it may leave behind.

Leak checks read LVM, device-mapper and mountinfo with the plain tools, not
with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.kernel.lvmtools import VolumeGroup, sh
from tests.support import NODE_ID, DriverProcess, mounts_under


def lvm_driver(root: Path, vg: VolumeGroup, *, thin: bool, overprovision: float = 1.0,
               node_id: str = NODE_ID, extra: tuple[str, ...] = ()) -> DriverProcess:
    """A driver on ``vg`` (with its thin pool when ``thin``), with ``extra`` flags; not started."""
    args = ["--lvm-vg", vg.name, "--kubelet-dir", str(root / "kubelet"), *extra]
    if thin:
        args += ["--lvm-thinpool", vg.thinpool, "--lvm-thin-overprovision", str(overprovision)]
    return DriverProcess(root, node_id=node_id, backend="lvm", extra_args=tuple(args))


def volume_lvs(vg: str) -> dict[str, dict[str, str]]:
    """Every ``lcv-*``/``lcs-*`` LV of ``vg``: name -> lvs row (attr, size, tags, pool)."""
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
             "-o", "lv_name,lv_attr,lv_size,lv_tags,pool_lv,origin", vg)
    rows = json.loads(out)["report"][0]["lv"]
    return {row["lv_name"]: row for row in rows if row["lv_name"].startswith(("lcv-", "lcs-"))}


def dm_names(vg: str) -> list[str]:
    """device-mapper devices of ``vg``'s volumes (names are ``<vg>-<lv>`` with dashes doubled)."""
    prefix = vg.replace("-", "--") + "-lc"
    return [line.split()[0] for line in sh("dmsetup", "ls").splitlines() if line.startswith(prefix)]


def leaks(driver: DriverProcess, vg: str) -> dict[str, list[str]]:
    return {
        "lvs": sorted(volume_lvs(vg)),
        "dm": dm_names(vg),
        "mounts": mounts_under(driver.kubelet_dir),
    }


NO_LEAKS: dict[str, list[str]] = {"lvs": [], "dm": [], "mounts": []}
