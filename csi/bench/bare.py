"""The floor: the provisioning path done with the bare commands, no driver.

Up: ``fallocate`` the image, ``losetup --direct-io=on --sector-size 4096 -f
--show`` (the loop settings the driver gives every new volume), ``mkfs`` with
the driver's own flags, ``mount``, ``mount --bind`` to the target.
Down: ``umount`` both, ``losetup -d``, ``rm``. With a volume group
(``--bare-lvm-vg``), the lvm path instead: ``lvcreate``, ``mkfs``, ``mount``,
``mount --bind``; ``umount`` both, ``lvremove``. Each step is one process, as a
shell script would do it; the driver's overhead is its time over this one.
Everything made here is undone here, also on failure.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from typing import Any

import anyio

from backends.system.loop import LOGICAL_BLOCK_BYTES
from backends.system.mkfs import mkfs_argv
from backends.system.runner import ProcessRunner, Runner
from csi.bench.stats import Recorder

COMMAND_TIMEOUT = 120.0


async def _step(runner: Runner, rec: Recorder, name: str, argv: list[str]) -> str:
    started = time.perf_counter()
    result = await runner.run(argv, timeout=COMMAND_TIMEOUT)
    rec.add(name, time.perf_counter() - started)
    return result.stdout.strip()


async def _format_and_mount(runner: Runner, rec: Recorder, device: str, fs_type: str, *, staging: str,
                            target: str, mounted: list[str]) -> None:
    """mkfs, mount at ``staging``, bind onto ``target``: what NodeStage and NodePublish do; records ``mounted``."""
    await _step(runner, rec, "mkfs", mkfs_argv(device, fs_type))
    await _step(runner, rec, "mount", ["mount", "-t", fs_type, device, staging])
    mounted.append(staging)
    await _step(runner, rec, "mount --bind", ["mount", "--bind", staging, target])
    mounted.append(target)


async def _unmount(runner: Runner, rec: Recorder, *, staging: str, target: str, mounted: list[str]) -> None:
    """The two unmounts of NodeUnpublish and NodeUnstage."""
    await _step(runner, rec, "umount target", ["umount", target])
    mounted.remove(target)
    await _step(runner, rec, "umount staging", ["umount", staging])
    mounted.remove(staging)


async def _undo(runner: Runner, mounted: list[str], release: list[str]) -> None:
    """After a failed step: unmount what is still mounted, then ``release`` the device (when not empty)."""
    with anyio.CancelScope(shield=True):
        for point in reversed(mounted):
            await runner.run(["umount", point], timeout=COMMAND_TIMEOUT, check=False)
        if release:
            await runner.run(release, timeout=COMMAND_TIMEOUT, check=False)


async def _one(runner: Runner, rec: Recorder, root: str, fs_type: str, size: int) -> None:
    image = os.path.join(root, "image.img")
    staging = os.path.join(root, "staging")
    target = os.path.join(root, "target")
    for directory in (staging, target):
        await anyio.to_thread.run_sync(functools.partial(os.makedirs, directory, exist_ok=True))
    device = ""
    mounted: list[str] = []
    started = time.perf_counter()
    try:
        await _step(runner, rec, "fallocate", ["fallocate", "-l", str(size), image])
        device = await _step(runner, rec, "losetup", ["losetup", "--direct-io=on", "--sector-size",
                                                      str(LOGICAL_BLOCK_BYTES), "-f", "--show", image])
        await _format_and_mount(runner, rec, device, fs_type, staging=staging, target=target, mounted=mounted)
        rec.add("up (bare)", time.perf_counter() - started)
        started = time.perf_counter()
        await _unmount(runner, rec, staging=staging, target=target, mounted=mounted)
        await _step(runner, rec, "losetup -d", ["losetup", "-d", device])
        device = ""
        await _step(runner, rec, "rm", ["rm", "-f", image])
        rec.add("down (bare)", time.perf_counter() - started)
    finally:
        await _undo(runner, mounted, ["losetup", "-d", device] if device else [])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image)


async def _one_lvm(runner: Runner, rec: Recorder, root: str, vg: str, *, fs_type: str, size: int) -> None:
    """The lvm path as a script would do it: ``lvcreate``, ``mkfs``, ``mount``, ``mount --bind``; and back."""
    name = f"bare-{os.getpid()}"
    device = f"/dev/{vg}/{name}"
    staging = os.path.join(root, "staging")
    target = os.path.join(root, "target")
    for directory in (staging, target):
        await anyio.to_thread.run_sync(functools.partial(os.makedirs, directory, exist_ok=True))
    created = False
    mounted: list[str] = []
    started = time.perf_counter()
    try:
        await _step(runner, rec, "lvcreate", ["lvcreate", "-q", "-y", "-L", f"{size}b", "-n", name, vg])
        created = True
        await _format_and_mount(runner, rec, device, fs_type, staging=staging, target=target, mounted=mounted)
        rec.add("up (bare)", time.perf_counter() - started)
        started = time.perf_counter()
        await _unmount(runner, rec, staging=staging, target=target, mounted=mounted)
        await _step(runner, rec, "lvremove", ["lvremove", "-q", "-f", f"{vg}/{name}"])
        created = False
        rec.add("down (bare)", time.perf_counter() - started)
    finally:
        await _undo(runner, mounted, ["lvremove", "-q", "-f", f"{vg}/{name}"] if created else [])


async def provision_bare(base_dir: str, fs_type: str, iterations: int, size: int, *,
                         lvm_vg: str = "", runner: Runner | None = None) -> dict[str, Any]:
    """The bare path ``iterations`` times: loop files in ``base_dir``, or LVs in ``lvm_vg`` when given.

    ``runner`` runs the commands (default: a :class:`ProcessRunner`; tests pass a fake).
    """
    runner = runner or ProcessRunner()
    rec = Recorder()
    root = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="bare-", dir=base_dir))
    try:
        for _ in range(iterations):
            if lvm_vg:
                await _one_lvm(runner, rec, root, lvm_vg, fs_type=fs_type, size=size)
            else:
                await _one(runner, rec, root, fs_type, size)
    finally:
        await anyio.to_thread.run_sync(_remove_tree, root)
    return {"fs_type": fs_type, "iterations": iterations, "size_bytes": size, "latency": rec.summaries(),
            "kind": "lvm" if lvm_vg else "loopfile"}


def _remove_tree(root: str) -> None:
    for sub in ("staging", "target"):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(root, sub))
    with contextlib.suppress(OSError):
        os.rmdir(root)
