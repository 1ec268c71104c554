"""Tracks what a spec created and undoes it afterwards through the plugin's own RPCs.

Teardown runs in the reverse order of the volume lifecycle: node unpublish,
node unstage, controller unpublish, snapshot deletion, volume deletion, and
finally the directories the suite created for staging and publishing. Every
step is attempted even if an earlier one failed; failures are collected and
reported so a spec whose cleanup leaks is visibly broken.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.conformance.client import Client
from e2e.conformance.config import SuiteConfig

# Codes a teardown call may answer when the thing it undoes is already gone.
_GONE = (Status.NOT_FOUND,)


@dataclass
class Tracker:
    client: Client
    config: SuiteConfig
    volumes: dict[str, None] = field(default_factory=dict)
    snapshots: dict[str, None] = field(default_factory=dict)
    controller_publications: dict[tuple[str, str], None] = field(default_factory=dict)
    stages: dict[tuple[str, str], None] = field(default_factory=dict)
    publications: dict[tuple[str, str], None] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)

    async def cleanup(self) -> list[str]:
        """Undo everything still recorded; return one line per step that failed."""
        problems: list[str] = []
        secrets = dict(self.config.secrets)
        for volume_id, target in reversed(list(self.publications)):
            req = csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
            await self._attempt(self.client.node.node_unpublish_volume(req, timeout=self.client.timeout),
                                f"NodeUnpublishVolume {volume_id} {target}", problems)
        for volume_id, staging in reversed(list(self.stages)):
            ureq = csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)
            await self._attempt(self.client.node.node_unstage_volume(ureq, timeout=self.client.timeout),
                                f"NodeUnstageVolume {volume_id} {staging}", problems)
        for volume_id, node_id in reversed(list(self.controller_publications)):
            creq = csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id, secrets=secrets)
            await self._attempt(self.client.controller.controller_unpublish_volume(creq, timeout=self.client.timeout),
                                f"ControllerUnpublishVolume {volume_id} {node_id}", problems)
        for snapshot_id in reversed(list(self.snapshots)):
            sreq = csi.DeleteSnapshotRequest(snapshot_id=snapshot_id, secrets=secrets)
            await self._attempt(self.client.controller.delete_snapshot(sreq, timeout=self.client.timeout),
                                f"DeleteSnapshot {snapshot_id}", problems)
        for volume_id in reversed(list(self.volumes)):
            dreq = csi.DeleteVolumeRequest(volume_id=volume_id, secrets=secrets)
            await self._attempt(self.client.controller.delete_volume(dreq, timeout=self.client.timeout),
                                f"DeleteVolume {volume_id}", problems)
        for directory in reversed(self.directories):
            await _remove_quietly(directory, problems)
        self.publications.clear()
        self.stages.clear()
        self.controller_publications.clear()
        self.snapshots.clear()
        self.volumes.clear()
        self.directories.clear()
        return problems

    @staticmethod
    async def _attempt(call: Awaitable[object], what: str, problems: list[str]) -> None:
        try:
            await call
        except GRPCError as exc:
            if exc.status not in _GONE:
                problems.append(f"{what}: {exc.status.name}: {exc.message}")
        except TimeoutError:
            problems.append(f"{what}: timed out")


async def _remove_quietly(directory: str, problems: list[str]) -> None:
    """Remove a suite-created directory tree of plain entries; a mount left inside is reported, not forced."""
    path = anyio.Path(directory)
    if not await path.exists():
        return
    try:
        await _remove_tree(path, frozenset(await anyio.to_thread.run_sync(leaks.mounts_under, directory)))
    except OSError as exc:
        problems.append(f"removing {directory}: {exc}")


async def _remove_tree(path: anyio.Path, mounts: frozenset[str]) -> None:
    # Never descend into or unlink a mount point: a leaked mount keeps the volume's data.
    if str(path) in mounts:
        raise OSError(f"{path} is still a mount point (the plugin left it mounted)")
    if await path.is_dir() and not await path.is_symlink():
        async for child in path.iterdir():
            await _remove_tree(child, mounts)
        await path.rmdir()
    else:
        await path.unlink()
