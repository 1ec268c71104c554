"""Loopfile create/delete durability: what is fsynced before success, and what start-up makes of a crash.

Each crash test runs the backend in a child process with a fault point armed (the child SIGKILLs itself
there, as a killed container would), then starts a fresh backend on the same directory and checks that the
volume is either wholly there or wholly gone, with no file left behind.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backends.base import AccessType, VolumeSpec, volume_id_for
from backends.loopfile.backend import LoopfileBackend
from backends.loopfile.options import LoopfileOptions
from backends.system.testing import FakeRunner

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
THIN = {"loopfile.localcsi.dev/provisioning": "thin"}

CHILD = textwrap.dedent("""
    import sys
    import anyio
    from backends import faults
    from backends.base import AccessType, VolumeSpec
    from backends.loopfile.backend import LoopfileBackend
    from backends.loopfile.options import LoopfileOptions
    from backends.system.testing import FakeRunner
    import backends.loopfile.backend as lf

    lf.require_tools = lambda names: None
    directory, action, point = sys.argv[1:4]

    async def main() -> None:
        backend = LoopfileBackend("n1", LoopfileOptions(directory=directory), FakeRunner(lambda argv: (0, "", "")))
        await backend.start()
        spec = VolumeSpec("pvc-crash", 4 << 20, 0, {}, AccessType.BLOCK, "", None)
        faults.arm(point + ":kill")
        if action == "create":
            await backend.create_volume(spec)
        else:
            await backend.delete_volume(spec.volume_id)
        print("survived", flush=True)

    anyio.run(main)
""")


def _spec(name: str = "pvc-crash", thin: bool = False) -> VolumeSpec:
    return VolumeSpec(name, 4 * MIB, 0, THIN if thin else {}, AccessType.BLOCK, "", None)


async def _backend(directory: Path, monkeypatch: pytest.MonkeyPatch) -> LoopfileBackend:
    monkeypatch.setattr("backends.loopfile.backend.require_tools", lambda names: None)
    backend = LoopfileBackend("n1", LoopfileOptions(directory=str(directory)), FakeRunner(lambda argv: (0, "", "")))
    await backend.start()
    return backend


def _run_child(directory: Path, action: str, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(directory), action, point], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


@pytest.mark.anyio
async def test_create_syncs_image_record_and_directory_before_success(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await _backend(tmp_path, monkeypatch)
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    volume = await backend.create_volume(_spec())
    monkeypatch.setattr(os, "fsync", real_fsync)

    assert _files(tmp_path) == sorted([f"{volume.volume_id}.img", f"{volume.volume_id}.json"])
    for name in (f"{volume.volume_id}.img", f"{volume.volume_id}.json", "."):
        st = os.stat(tmp_path / name)
        assert (st.st_dev, st.st_ino) in synced, f"{name} was not fsynced before CreateVolume returned"
    # the directory is fsynced after the last rename, so both names are durable
    dir_st = os.stat(tmp_path)
    assert synced[-1] == (dir_st.st_dev, dir_st.st_ino)
    assert len(synced) == 3
    assert os.stat(tmp_path / f"{volume.volume_id}.img").st_size == 4 * MIB


@pytest.mark.anyio
async def test_delete_removes_both_files_with_one_directory_fsync(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await _backend(tmp_path, monkeypatch)
    volume = await backend.create_volume(_spec())
    synced: list[bool] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    await backend.delete_volume(volume.volume_id)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert synced == [True]
    assert _files(tmp_path) == []
    assert await backend.list_volumes() == []


@pytest.mark.anyio
async def test_create_refuses_to_overwrite_an_image_without_a_record(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await _backend(tmp_path, monkeypatch)
    orphan = tmp_path / f"{volume_id_for('pvc-crash')}.img"
    orphan.write_bytes(b"someone's data")
    with pytest.raises(FileExistsError):
        await backend.create_volume(_spec())
    assert orphan.read_bytes() == b"someone's data"
    assert _files(tmp_path) == [orphan.name]


@pytest.mark.root
@pytest.mark.anyio
@pytest.mark.parametrize("point", ["create.after_image", "create.after_meta"])
async def test_crash_during_create_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  point: str) -> None:
    done = _run_child(tmp_path, "create", point)
    assert done.returncode == -9, done.stderr
    assert any(name.startswith(".tmp-") for name in _files(tmp_path))  # the crash really left work behind
    backend = await _backend(tmp_path, monkeypatch)
    assert await backend.list_volumes() == []
    assert _files(tmp_path) == []
    again = await backend.create_volume(_spec())  # the CO's retry starts clean
    assert again.volume_id == volume_id_for("pvc-crash")


@pytest.mark.root
@pytest.mark.anyio
async def test_crash_after_create_keeps_the_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = _run_child(tmp_path, "create", "create.after_ready")
    assert done.returncode == -9, done.stderr
    backend = await _backend(tmp_path, monkeypatch)
    volume = await backend.get_volume(volume_id_for("pvc-crash"))
    assert volume.capacity_bytes == 4 * MIB
    assert not volume.condition.abnormal
    retried = await backend.create_volume(_spec())  # the CO's retry finds the finished volume
    assert (retried.volume_id, retried.capacity_bytes) == (volume.volume_id, volume.capacity_bytes)


@pytest.mark.root
@pytest.mark.anyio
async def test_crash_during_delete_finishes_the_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await _backend(tmp_path, monkeypatch)
    await backend.create_volume(_spec())
    done = _run_child(tmp_path, "delete", "delete.after_mark")
    assert done.returncode == -9, done.stderr
    restarted = await _backend(tmp_path, monkeypatch)
    assert await restarted.list_volumes() == []
    assert _files(tmp_path) == []


@pytest.mark.anyio
async def test_records_left_creating_by_an_older_driver_are_cleared(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await _backend(tmp_path, monkeypatch)
    volume = await backend.create_volume(_spec(thin=True))
    record = tmp_path / f"{volume.volume_id}.json"
    record.write_text(record.read_text().replace('"ready"', '"creating"'))
    restarted = await _backend(tmp_path, monkeypatch)
    assert await restarted.list_volumes() == []
    assert _files(tmp_path) == []
