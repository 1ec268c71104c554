"""What a driver left behind, seen from outside: mounts, loop devices, LVs, claimed disks.

The one leak checker of the tests and the end-to-end harnesses (tests import it; nothing under ``e2e/``
imports the tests). It reads mountinfo and sysfs and runs the plain LVM, device-mapper and partition
tools, never the driver's own code, so a bug in the driver cannot hide its own leaks.

Every function looks only at what its caller names: mounts at or under a directory, loop devices whose
backing file lies under a directory or is one of a set of files, LVs of one volume group, a set of disks.
Other processes on a CI machine mount filesystems and attach loop devices too; a check that counted the
machine's whole state would fail because of them, or pass only while they are idle.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backends.ids import is_snapshot_id, is_volume_id

#: The tag the lvm backend gives every LV it makes: part of its on-disk interface, like the LV names.
LV_OWNER_TAG = "localcsi.dev/owner=localcsi"
#: The GPT partition type of a disk the rawdisk backend claimed; the partition's name is the volume id.
RAWDISK_PARTITION_TYPE = "c3ba621b-6086-40bf-945a-c109bf7cf0c5"
COMMAND_TIMEOUT = 60.0
_ESCAPES = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))
_LV_FIELDS = "lv_name,lv_attr,lv_active,lv_size,lv_tags,pool_lv,origin"


def _unescape(field: str) -> str:
    for escaped, char in _ESCAPES:
        field = field.replace(escaped, char)
    return field


def _within(path: str, root: Path | str) -> bool:
    top = str(root).rstrip("/") or "/"
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class Mount:
    point: str
    #: The directory of its filesystem that is mounted here (``/`` for a whole filesystem; a bind mount's source).
    root: str
    #: ``major:minor`` of the filesystem.
    device: str


def mount_table() -> list[Mount]:
    """Every mount of this mount namespace in mountinfo order: raw, for callers that keep only their own."""
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            table.append(Mount(_unescape(fields[4]), _unescape(fields[3]), fields[2]))
    return table


def _mount_points() -> list[str]:
    return [m.point for m in mount_table()]


def mounts_under(root: Path | str) -> list[str]:
    """Mount points at ``root`` or below it, one entry per mount (a stacked mount point appears twice)."""
    return [p for p in _mount_points() if _within(p, root)]


def mount_count(path: Path | str) -> int:
    """How many mounts are stacked at exactly ``path``."""
    return sum(1 for p in _mount_points() if p == str(path))


def stray_mounts(root: Path, expected: Iterable[Path]) -> list[str]:
    """Mounts under ``root`` at none of the ``expected`` paths (or inside one), and mounts stacked twice."""
    wanted = list(expected)
    points = mounts_under(root)
    found = []
    for point in sorted(set(points)):
        if not any(Path(point) == p or Path(point).is_relative_to(p) for p in wanted):
            found.append(f"stray mount {point}")
        elif points.count(point) > 1:
            found.append(f"{points.count(point)} mounts stacked at {point}")
    return found


@dataclass(frozen=True)
class LoopDevice:
    device: str
    backing_file: str
    #: ``major:minor``, as mountinfo names the filesystems on it.
    number: str = ""


def loop_devices() -> list[LoopDevice]:
    """Every bound loop device with its backing file: raw, for callers that keep only their own."""
    found = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
            number = (entry / "dev").read_text().strip()
        except OSError:
            continue
        found.append(LoopDevice(f"/dev/{entry.name}", backing, number))
    return found


def loops_backed_under(directory: Path | str) -> list[LoopDevice]:
    """Loop devices whose backing file lies under ``directory`` (a loopfile driver's images)."""
    return [info for info in loop_devices() if _within(info.backing_file, directory)
            and info.backing_file != str(directory)]


def loops_backed_by(files: Iterable[str]) -> list[LoopDevice]:
    """Loop devices over one of ``files`` (a rawdisk driver's partition views over its disks)."""
    wanted = set(files)
    return [info for info in loop_devices() if info.backing_file in wanted]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env, check=False)


def ours(name: str) -> bool:
    """Whether ``name`` is one of the driver's volume or snapshot ids."""
    return is_volume_id(name) or is_snapshot_id(name)


def volume_lvs(vg: str) -> dict[str, dict[str, str]]:
    """The driver's LVs in ``vg`` (tagged as its own, or named like its ids): name -> ``lvs`` row."""
    done = _run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _LV_FIELDS, vg])
    if done.returncode != 0:
        raise RuntimeError(f"lvs {vg} failed ({done.returncode}): {done.stderr.strip()}")
    rows = json.loads(done.stdout)["report"][0]["lv"]
    return {row["lv_name"]: row for row in rows
            if LV_OWNER_TAG in row.get("lv_tags", "").split(",") or ours(row["lv_name"])}


def dm_devices(vg: str) -> list[str]:
    """device-mapper devices of the driver's LVs in ``vg`` (``<vg>-<lv>``, dashes doubled)."""
    done = _run(["dmsetup", "ls"])
    if done.returncode != 0:
        raise RuntimeError(f"dmsetup ls failed ({done.returncode}): {done.stderr.strip()}")
    prefix = vg.replace("-", "--") + "-lc"
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith(prefix)]


def claimed_disks(disks: Iterable[str]) -> dict[str, str]:
    """Disks of ``disks`` carrying the rawdisk backend's claim: disk -> the volume id its partition names."""
    found = {}
    for disk in disks:
        done = _run(["sfdisk", "--json", disk])
        if done.returncode != 0:
            continue  # no partition table at all
        table = json.loads(done.stdout).get("partitiontable", {})
        for part in table.get("partitions", []):
            if str(part.get("type", "")).lower() == RAWDISK_PARTITION_TYPE:
                found[disk] = str(part.get("name", ""))
    return found


def signed_disks(disks: Iterable[str]) -> list[str]:
    """Disks of ``disks`` on which a low-level probe finds any signature (filesystem, partition table, …)."""
    return [disk for disk in disks if _run(["blkid", "-p", "-o", "export", disk]).stdout.strip()]


@dataclass(frozen=True)
class Scope:
    """Where one driver may leave something behind; each part is optional."""

    #: Mounts at or below it (the kubelet directory).
    kubelet_dir: Path | None = None
    #: The driver's own directory of staged block volumes' device binds (mounts at or below it).
    block_dir: Path | None = None
    #: Loop devices whose backing files lie below it (loopfile images).
    data_dir: Path | None = None
    #: The volume group of an lvm driver: its tagged LVs and their device-mapper devices.
    vg: str = ""
    #: The disks of a rawdisk driver: loop devices layered over them, and disks still claimed or signed.
    disks: tuple[str, ...] = ()


def find(scope: Scope) -> dict[str, list[str]]:
    """What is left in ``scope``, one list per kind the scope names (all empty: nothing leaked)."""
    found: dict[str, list[str]] = {}
    if scope.kubelet_dir is not None or scope.block_dir is not None:
        found["mounts"] = [point for root in (scope.kubelet_dir, scope.block_dir) if root is not None
                           for point in mounts_under(root)]
    if scope.data_dir is not None:
        found["loops"] = [info.device for info in loops_backed_under(scope.data_dir)]
    if scope.vg:
        found["lvs"] = sorted(volume_lvs(scope.vg))
        found["dm"] = dm_devices(scope.vg)
    if scope.disks:
        found["views"] = [info.device for info in loops_backed_by(scope.disks)]
        found["disks"] = sorted(claimed_disks(scope.disks))
    return found
