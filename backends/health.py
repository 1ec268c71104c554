"""What every backend's health function checks on an attached volume, and what start-up warns about.

A backend's ``volume_health`` first checks its own storage (an image file, an LV, a disk); then, for volumes
attached here, :func:`device_conditions` checks what the pod sees on the device:

* the mounted filesystem must reach (nearly) the end of its device (``FS_IOC_GETFSMAP``). After a
  ControllerExpand and NodeExpand the device has the new size; when the filesystem could not follow (ext4
  online growth without ``CAP_SYS_RESOURCE``, a failed ``xfs_growfs``), the volume reports the new capacity
  while the pod has the old size: abnormal, with both figures;
* an ext4 filesystem must not have recorded errors (its superblock's error count, from sysfs): a write the
  backing store refused (a thin image whose filesystem filled up) shows there as I/O errors.

Each check reads sysfs, mountinfo once, and one ioctl per mounted volume: cheap enough for ListVolumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import anyio
from loguru import logger

from backends.base import Condition
from backends.errors import BackendError
from backends.system import files, privileges
from backends.system import fs as fs_tools
from backends.system import mount as mnt
from backends.system.stats import block_device_size, filesystem_stats

MIB = 1 << 20
#: How far short of its device's end a grown filesystem may stop (ext4 drops a last block group too small
#: for its own metadata, ~2 MiB with 4 KiB blocks; xfs a last allocation group under 256 KiB).
GROWTH_SLACK_BYTES = 4 * MIB
#: Filesystem types whose size and errors the checks understand.
CHECKED_FS_TYPES = ("ext4", "xfs")


def combine(*conditions: Condition | None) -> Condition:
    """The first abnormal condition, or healthy."""
    return next((c for c in conditions if c is not None and c.abnormal), Condition())


async def device_conditions(devices: Mapping[str, str]) -> dict[str, Condition]:
    """For each volume id → attached device path: its condition as the device and its filesystem show it."""
    if not devices:
        return {}
    entries = await mnt.mounts()
    out = {}
    for volume_id, device in devices.items():
        try:
            out[volume_id] = await _device_condition(device, entries)
        except (OSError, BackendError) as exc:  # the device went while we looked: the backend's check says so
            logger.debug("health of {} on {}: {}", volume_id, device, exc)
            out[volume_id] = Condition()
    return out


async def _device_condition(device: str, entries: list[mnt.MountInfo]) -> Condition:
    state = await mnt.path_state(device)
    if not state.exists or not state.is_block:
        return Condition(abnormal=True, message=f"the volume's device {device} is gone")
    major_minor = f"{os.major(state.rdev)}:{os.minor(state.rdev)}"
    mount = next((e for e in entries if e.major_minor == major_minor and e.fs_type in CHECKED_FS_TYPES), None)
    if mount is None:
        return Condition()
    errors = await anyio.to_thread.run_sync(fs_tools.ext4_error_count, device) if mount.fs_type == "ext4" else 0
    if errors:
        return Condition(abnormal=True, message=f"the ext4 filesystem on {device} has recorded {errors} errors "
                                                "(I/O errors reached it: see the kernel log); check it with fsck")
    size = await block_device_size(device)
    offset = max(0, size - min(GROWTH_SLACK_BYTES, size // 2) - 1)
    reaches = await anyio.to_thread.run_sync(fs_tools.filesystem_reaches, mount.mount_point, offset)
    if reaches is False:
        usable = (await filesystem_stats(mount.mount_point)).total_bytes
        return Condition(abnormal=True, message=(
            f"the {mount.fs_type} filesystem on {device} is smaller than the volume ({usable} bytes usable on a "
            f"{size}-byte device): it was not grown to the volume's size; the pod still has the old size"))
    return Condition()


def startup_warnings(*, expansion: bool, image_directory: str = "") -> list[str]:
    """What this node cannot do, each with what it disables. Blocking (a /proc read, a probe file)."""
    warnings = []
    if expansion and not privileges.has_capability(privileges.CAP_SYS_RESOURCE):
        warnings.append("this process lacks CAP_SYS_RESOURCE: ext4 filesystems cannot grow online, so "
                        "NodeExpandVolume of a mounted ext4 volume fails and the volume reports abnormal while its "
                        "filesystem is smaller than its device; xfs volumes still grow online")
    if image_directory and not files.supports_direct_io(image_directory):
        warnings.append(f"the filesystem of {image_directory} does not support direct I/O: loop devices use "
                        "buffered I/O (data cached twice, writes acknowledged before they reach the image)")
    return warnings
