"""LVM through its command-line tools: JSON reports in, domain errors out.

Every call goes through a :class:`~backends.system.runner.Runner` (so a
command prefix such as ``nsenter`` applies) with ``--config`` set to a
container-friendly configuration: no udev synchronisation or rules (LVM creates
``/dev/mapper`` nodes and ``/dev/<vg>/<lv>`` links itself), no device list from
udev, no dmeventd monitoring. Reports are requested as
``--reportformat json --units b --nosuffix`` and parsed into frozen records.

Failures are classified here, by exit code *and* stderr pattern, into
:mod:`backends.errors` (seen on LVM 2.03.16, Debian 12):

=====================================================  ==========================
exit 5 and stderr like                                 raised
=====================================================  ==========================
``insufficient free space`` / ``Insufficient free``    CapacityExhausted
``Failed to find logical volume`` / ``... not found``  LogicalVolumeNotFound
``Volume group "x" not found``                         VolumeGroupNotFound
``already exists``                                     AlreadyExists
``contains a filesystem in use`` / ``in use``          VolumeInUse
``Can't get lock``                                     Busy
``/dev/mapper/control`` / ``device-mapper``            Unavailable
=====================================================  ==========================

Exit 3 (command line rejected) becomes InvalidArgument; anything else stays the
:class:`~backends.system.errors.CommandError` (a SystemFailure).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from loguru import logger

from backends import errors
from backends.system.errors import CommandError
from backends.system.runner import Result, Runner

#: Configuration passed with ``--config`` on every call (works without udevd, in containers).
CONTAINER_CONFIG = (
    "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } "
    'devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }'
)
REPORT_ARGS = ("--reportformat", "json", "--units", "b", "--nosuffix")
LV_FIELDS = (
    "lv_name", "vg_name", "lv_uuid", "lv_size", "lv_attr", "lv_tags", "pool_lv", "data_percent",
    "metadata_percent", "lv_health_status", "lv_path", "lv_dm_path", "segtype",
)  # fmt: skip
VG_FIELDS = (
    "vg_name", "vg_uuid", "vg_size", "vg_free", "vg_extent_size", "vg_extent_count", "vg_free_count",
    "vg_attr", "pv_count", "vg_missing_pv_count", "lv_count", "vg_tags",
)  # fmt: skip
LVM_TIMEOUT = 120.0

#: LVM exit codes (lib/commands/errors.h): ECMD_FAILED and EINVALID_CMD_LINE.
EXIT_FAILED = 5
EXIT_INVALID = 3


class LogicalVolumeNotFound(errors.NotFound):
    pass


class VolumeGroupNotFound(errors.NotFound):
    pass


_CLASSIFIERS: tuple[tuple[re.Pattern[str], type[errors.BackendError]], ...] = (
    (re.compile(r"/dev/mapper/control|device-mapper.*(not|missing|failed)|Please check that device-mapper", re.I),
     errors.Unavailable),
    (re.compile(r"insufficient free (space|extents)|Insufficient suitable allocatable extents"
                r"|free space in thin pool .* reached threshold", re.I), errors.CapacityExhausted),
    (re.compile(r"Volume group \"[^\"]*\" not found"), VolumeGroupNotFound),
    (re.compile(r"Failed to find logical volume|Logical volume \S+ not found|not found in volume group"),
     LogicalVolumeNotFound),
    (re.compile(r"already exists"), errors.AlreadyExists),
    (re.compile(r"contains a filesystem in use|is used by another device|\bin use\b"), errors.VolumeInUse),
    (re.compile(r"Can't get lock|Resource temporarily unavailable"), errors.Busy),
)  # fmt: skip


def classify(error: CommandError) -> errors.BackendError:
    """The domain error for a failed LVM command (the CommandError itself when unknown)."""
    message = f"{error.argv[0] if error.argv else 'lvm'}: {' '.join(error.stderr.split()) or error.message}"
    if error.returncode == EXIT_INVALID:
        return errors.InvalidArgument(message)
    if error.returncode == EXIT_FAILED:
        for pattern, kind in _CLASSIFIERS:
            if pattern.search(error.stderr):
                return kind(message)
    return error


def _int(value: str) -> int:
    return int(value) if value else 0


def _percent(value: str) -> float | None:
    return float(value) if value else None


def _tags(value: str) -> tuple[str, ...]:
    return tuple(tag for tag in value.split(",") if tag)


@dataclass(frozen=True)
class LogicalVolume:
    """One row of ``lvs``. ``attr`` is the 10-character ``lv_attr``."""

    name: str
    vg_name: str
    uuid: str
    size_bytes: int
    attr: str
    tags: tuple[str, ...]
    pool_lv: str
    data_percent: float | None
    metadata_percent: float | None
    health_status: str
    path: str
    dm_path: str
    segtype: str

    @classmethod
    def from_json(cls, row: Mapping[str, str]) -> LogicalVolume:
        return cls(
            name=row["lv_name"],
            vg_name=row["vg_name"],
            uuid=row["lv_uuid"],
            size_bytes=_int(row["lv_size"]),
            attr=row["lv_attr"].ljust(10, "-"),
            tags=_tags(row["lv_tags"]),
            pool_lv=row.get("pool_lv", ""),
            data_percent=_percent(row.get("data_percent", "")),
            metadata_percent=_percent(row.get("metadata_percent", "")),
            health_status=row.get("lv_health_status", ""),
            path=row.get("lv_path", ""),
            dm_path=row.get("lv_dm_path", ""),
            segtype=row.get("segtype", ""),
        )

    @property
    def full_name(self) -> str:
        return f"{self.vg_name}/{self.name}"

    @property
    def active(self) -> bool:
        return self.attr[4] == "a"

    @property
    def open(self) -> bool:
        return self.attr[5] == "o"

    @property
    def thin(self) -> bool:
        return self.segtype == "thin"

    @property
    def thin_pool(self) -> bool:
        return self.segtype == "thin-pool"

    @property
    def activation_skip(self) -> bool:
        """LVM skips this LV on ordinary activation (``k``, set on thin snapshots by default)."""
        return self.attr[9] == "k"

    @property
    def hidden(self) -> bool:
        return self.name.startswith("[")

    def problem(self) -> str | None:
        """Why this LV cannot be used as it should, or None when it is healthy."""
        health = self.attr[8]
        if health == "p" or self.health_status == "partial":
            return "a physical volume under it is missing (partial)"
        if health not in ("-", "w"):
            return f"health status {self.health_status or health!r} reported by LVM"
        if self.health_status:
            return f"health status {self.health_status!r} reported by LVM"
        state = self.attr[4]
        if state in ("s", "S"):
            return "device is suspended"
        if state in ("d", "i"):
            return "device-mapper device is present without a usable table"
        if self.thin_pool and self.data_percent is not None and self.data_percent >= 100.0:
            return "thin pool is out of data space"
        if self.thin_pool and self.metadata_percent is not None and self.metadata_percent >= 100.0:
            return "thin pool is out of metadata space"
        return None


@dataclass(frozen=True)
class VolumeGroup:
    """One row of ``vgs``."""

    name: str
    uuid: str
    size_bytes: int
    free_bytes: int
    extent_size_bytes: int
    extent_count: int
    free_count: int
    attr: str
    pv_count: int
    missing_pv_count: int
    lv_count: int
    tags: tuple[str, ...]

    @classmethod
    def from_json(cls, row: Mapping[str, str]) -> VolumeGroup:
        return cls(
            name=row["vg_name"],
            uuid=row["vg_uuid"],
            size_bytes=_int(row["vg_size"]),
            free_bytes=_int(row["vg_free"]),
            extent_size_bytes=_int(row["vg_extent_size"]),
            extent_count=_int(row["vg_extent_count"]),
            free_count=_int(row["vg_free_count"]),
            attr=row["vg_attr"].ljust(6, "-"),
            pv_count=_int(row["pv_count"]),
            missing_pv_count=_int(row.get("vg_missing_pv_count", "")),
            lv_count=_int(row.get("lv_count", "")),
            tags=_tags(row.get("vg_tags", "")),
        )

    @property
    def partial(self) -> bool:
        return self.attr[3] == "p" or self.missing_pv_count > 0


def parse_report(text: str, kind: str) -> list[Mapping[str, str]]:
    """The rows of a ``--reportformat json`` report (``kind`` is ``lv``, ``vg`` or ``pv``)."""
    try:
        data: Any = json.loads(text)
        rows: list[Mapping[str, str]] = []
        for report in data["report"]:
            rows.extend(report.get(kind, []))
        return rows
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.SystemFailure(f"unreadable LVM {kind} report: {text[:200]!r}") from exc


def dm_name(vg: str, lv: str) -> str:
    """The device-mapper name LVM gives ``vg/lv`` (each ``-`` doubled, then joined by ``-``)."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def _is_dm_device(path: str, name: str, sys_root: str) -> bool:
    """Whether ``path`` is a block device whose device-mapper name (sysfs) is ``name``."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISBLK(info.st_mode):
        return False
    number = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    try:
        with open(f"{sys_root}/dev/block/{number}/dm/name", encoding="utf-8") as file:
            return file.read().strip() == name
    except OSError:
        return False


def size_arg(size_bytes: int) -> str:
    return f"{size_bytes}b"


class Lvm:
    """The LVM commands the backends need, each one call to a tool."""

    def __init__(
        self, runner: Runner, *, config: str = CONTAINER_CONFIG, dev_root: str = "/dev", sys_root: str = "/sys"
    ) -> None:
        self.runner = runner
        self.config = config
        self.dev_root = dev_root
        self.sys_root = sys_root

    async def run(self, tool: str, args: Sequence[str], *, timeout: float = LVM_TIMEOUT) -> Result:  # noqa: ASYNC109
        """Run ``tool`` (an LVM command such as ``lvs``) with our ``--config`` and classify failures."""
        argv = [tool, "--config", self.config, *args] if self.config else [tool, *args]
        return await self._run(argv, timeout)

    async def _run(self, argv: Sequence[str], timeout: float) -> Result:  # noqa: ASYNC109
        try:
            return await self.runner.run(argv, timeout=timeout)
        except CommandError as exc:
            classified = classify(exc)
            if classified is exc:
                raise
            raise classified from exc

    # reports ------------------------------------------------------------
    async def version(self) -> str:
        result = await self._run(["lvm", "version"], LVM_TIMEOUT)
        return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""

    async def volume_group(self, vg: str) -> VolumeGroup:
        result = await self.run("vgs", [*REPORT_ARGS, "-o", ",".join(VG_FIELDS), "--", vg])
        rows = parse_report(result.stdout, "vg")
        if not rows:
            raise VolumeGroupNotFound(f"volume group {vg!r} not found")
        return VolumeGroup.from_json(rows[0])

    async def physical_volumes(self, vg: str) -> list[str]:
        """The device paths of ``vg``'s PVs that are present (a missing one shows as ``[unknown]``)."""
        result = await self.run("pvs", [*REPORT_ARGS, "-o", "pv_name,vg_name"])
        return sorted(row["pv_name"] for row in parse_report(result.stdout, "pv")
                      if row.get("vg_name") == vg and row.get("pv_name", "").startswith("/"))

    async def logical_volumes(self, vg: str) -> list[LogicalVolume]:
        """Every visible LV of ``vg`` (not the hidden sub-LVs of pools)."""
        result = await self.run("lvs", [*REPORT_ARGS, "-o", ",".join(LV_FIELDS), "--", vg])
        return [LogicalVolume.from_json(row) for row in parse_report(result.stdout, "lv")]

    async def logical_volume(self, vg: str, name: str) -> LogicalVolume | None:
        try:
            result = await self.run("lvs", [*REPORT_ARGS, "-o", ",".join(LV_FIELDS), "--", f"{vg}/{name}"])
        except LogicalVolumeNotFound:
            return None
        rows = parse_report(result.stdout, "lv")
        return LogicalVolume.from_json(rows[0]) if rows else None

    # changes ------------------------------------------------------------
    async def create_linear(self, vg: str, name: str, size_bytes: int, tags: Iterable[str]) -> None:
        """A linear LV; its first blocks are zeroed and old signatures wiped."""
        args = ["-q", "-y", "--type", "linear", "-L", size_arg(size_bytes), "-n", name, "-Z", "y", "-W", "y"]
        await self.run("lvcreate", [*args, *_tag_args("--addtag", tags), "--", vg])

    async def create_thin(self, vg: str, pool: str, name: str, size_bytes: int, tags: Iterable[str]) -> None:
        """A thin LV, left inactive (``-an``): the pool zeroes blocks on first write, nothing to wipe."""
        args = ["-q", "-y", "--type", "thin", "-V", size_arg(size_bytes), "--thinpool", pool, "-n", name, "-an"]
        await self.run("lvcreate", [*args, *_tag_args("--addtag", tags), "--", vg])

    async def create_thin_snapshot(
        self, vg: str, origin: str, name: str, tags: Iterable[str], *, activation_skip: bool
    ) -> None:
        """A thin snapshot of the thin LV ``origin`` (no size: it shares the origin's pool).

        The new LV is left inactive (``-an``). With ``activation_skip`` it carries
        LVM's skip flag (``k``: what a snapshot wants); without it, it is an
        ordinary thin LV that ``lvchange -ay`` activates (a restored or cloned volume).
        An active origin is suspended for the instant of the snapshot.
        """
        args = ["-q", "-y", "-s", "-n", name, "-an", "--setactivationskip", "y" if activation_skip else "n"]
        await self.run("lvcreate", [*args, *_tag_args("--addtag", tags), "--", f"{vg}/{origin}"])

    async def activate_skipped(self, vg: str, name: str) -> None:
        """Activate an LV that carries the activation-skip flag (``-K``)."""
        await self.run("lvchange", ["-q", "-ay", "-K", "--", f"{vg}/{name}"])

    async def remove(self, vg: str, name: str) -> None:
        await self.run("lvremove", ["-q", "-y", "--", f"{vg}/{name}"])

    async def extend(self, vg: str, name: str, size_bytes: int) -> None:
        """Grow to ``size_bytes`` (the filesystem is grown separately, on the node)."""
        await self.run("lvextend", ["-q", "-L", size_arg(size_bytes), "--", f"{vg}/{name}"])

    async def activate(self, vg: str, name: str) -> None:
        await self.run("lvchange", ["-q", "-ay", "--", f"{vg}/{name}"])

    async def deactivate(self, vg: str, name: str) -> None:
        await self.run("lvchange", ["-q", "-an", "--", f"{vg}/{name}"])

    async def change_tags(self, vg: str, name: str, *, add: Iterable[str] = (), delete: Iterable[str] = ()) -> None:
        args = [*_tag_args("--addtag", add), *_tag_args("--deltag", delete)]
        if args:
            await self.run("lvchange", ["-q", *args, "--", f"{vg}/{name}"])

    # devices, without LVM ---------------------------------------------------
    async def active_device(self, vg: str, name: str) -> str | None:
        """The device node of ``vg/name`` when it is active now, found with no LVM command.

        An LV is active exactly while its device-mapper device exists. Its
        ``/dev/<vg>/<lv>`` link, else its ``/dev/mapper`` node, counts only when
        it is a block device whose sysfs ``dm/name`` is that LV's (a stale node
        of another device never passes).
        """
        mapped = dm_name(vg, name)
        for path in (f"{self.dev_root}/{vg}/{name}", f"{self.dev_root}/mapper/{mapped}"):
            if await anyio.to_thread.run_sync(_is_dm_device, path, mapped, self.sys_root):
                return path
        return None

    async def device_node(self, lv: LogicalVolume) -> str:
        """The block device of an active LV: ``/dev/<vg>/<lv>``, made if missing.

        Without udev the link is normally made by LVM itself; when it is gone,
        ``vgmknodes`` recreates it, and the ``/dev/mapper`` node is the fallback.
        """
        if lv.path and await anyio.Path(lv.path).exists():
            return lv.path
        await self.runner.run(
            ["vgmknodes", "--config", self.config, "--", lv.full_name], check=False, timeout=LVM_TIMEOUT
        )
        if lv.path and await anyio.Path(lv.path).exists():
            return lv.path
        if lv.dm_path and not await anyio.Path(lv.dm_path).exists():
            await self.runner.run(["dmsetup", "mknodes"], check=False, timeout=LVM_TIMEOUT)
        if lv.dm_path and await anyio.Path(lv.dm_path).exists():
            logger.warning("{lv}: no {path} link; using {dm}", lv=lv.full_name, path=lv.path, dm=lv.dm_path)
            return lv.dm_path
        raise errors.SystemFailure(f"LV {lv.full_name} is active but has no device node ({lv.path}, {lv.dm_path})")


_TAG = re.compile(r"^[A-Za-z0-9_+.\-/=!:&#]{1,1024}$")


def valid_tag(tag: str) -> bool:
    return bool(_TAG.match(tag)) and not tag.startswith("-")


def _tag_args(option: str, tags: Iterable[str]) -> list[str]:
    args: list[str] = []
    for tag in tags:
        if not valid_tag(tag):
            raise errors.InvalidArgument(f"{tag!r} is not a valid LVM tag")
        args += [option, tag]
    return args
