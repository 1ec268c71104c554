"""backends.system.reflink on the host's own filesystem (tmp): sparse copies, request numbers, freeze rules.

(Reflink itself needs an xfs/btrfs directory; tests/backends/loopfile/test_snapshots.py makes one.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends import errors
from backends.system import reflink
from backends.system.errors import SyscallError

MIB = 1 << 20


def ioc(direction: int, kind: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (kind << 8) | number


def test_request_numbers_match_linux_fs_h() -> None:
    # _IOW(0x94, 9, int), _IOW(0x94, 13, struct file_clone_range), _IOWR('X', 119/120, int)
    assert ioc(1, 0x94, 9, 4) == reflink.FICLONE
    assert ioc(1, 0x94, 13, 32) == reflink.FICLONERANGE
    assert ioc(3, ord("X"), 119, 4) == reflink.FIFREEZE
    assert ioc(3, ord("X"), 120, 4) == reflink.FITHAW


def sparse_file(path: Path) -> dict[int, bytes]:
    chunks = {0: os.urandom(4096), 3 * MIB: os.urandom(MIB), 9 * MIB - 4096: os.urandom(4096)}
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.ftruncate(fd, 16 * MIB)
        for offset, data in chunks.items():
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return chunks


@pytest.mark.parametrize("allow_reflink", [True, False])
def test_copy_keeps_data_and_holes(tmp_path: Path, allow_reflink: bool) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    chunks = sparse_file(src)
    result = reflink.copy_image_sync(str(src), str(dst), allow_reflink=allow_reflink)
    assert dst.read_bytes() == src.read_bytes()
    assert result.size_bytes == 16 * MIB
    if result.method is reflink.CopyMethod.SPARSE:
        assert result.copied_bytes == sum(len(c) for c in chunks.values())
        assert os.stat(dst).st_blocks * 512 < 2 * MIB  # holes stayed holes
    fd = os.open(dst, os.O_RDONLY)
    try:
        segments = reflink.data_segments(fd, 16 * MIB)
    finally:
        os.close(fd)
    covered = [(o, o + n) for o, n in segments]
    for offset, data in chunks.items():
        assert any(start <= offset and offset + len(data) <= end for start, end in covered)


def test_copy_refuses_an_existing_target_and_leaves_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    sparse_file(src)
    dst.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        reflink.copy_image_sync(str(src), str(dst))
    assert dst.read_bytes() == b"mine"


def test_a_failed_copy_removes_its_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    sparse_file(src)

    def no_room(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reflink, "clone_file", lambda a, b: False)
    monkeypatch.setattr(reflink, "sparse_copy", no_room)
    with pytest.raises(errors.CapacityExhausted):
        reflink.copy_image_sync(str(src), str(dst))
    assert not dst.exists()


def test_empty_and_all_hole_files(tmp_path: Path) -> None:
    for size in (0, 8 * MIB):
        src, dst = tmp_path / f"src{size}", tmp_path / f"dst{size}"
        with src.open("wb") as handle:
            handle.truncate(size)
        reflink.copy_image_sync(str(src), str(dst), allow_reflink=False)
        assert os.stat(dst).st_size == size
        assert os.stat(dst).st_blocks == 0


def test_freeze_checks_the_device_before_freezing(tmp_path: Path) -> None:
    # tmp_path is on the root filesystem: a wrong expected device must refuse before any FIFREEZE.
    with pytest.raises(SyscallError, match="expected device"):
        reflink.freeze_sync(str(tmp_path), os.stat(tmp_path).st_dev + 1)
    with pytest.raises(SyscallError):
        reflink.freeze_sync(str(tmp_path / "absent"))
