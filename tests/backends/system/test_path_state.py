"""backends.system.mount's path helpers, which the node rule stands on: stat, links, emptiness, create, remove."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.system import mount as mnt

pytestmark = pytest.mark.anyio


async def test_a_path_through_a_symbolic_link_is_seen_whatever_exists_of_it(scratch: Path) -> None:
    (scratch / "real").mkdir()
    (scratch / "link").symlink_to(scratch / "real")
    for path in (scratch / "link", scratch / "link" / "absent" / "deeper"):
        assert (await mnt.path_state(str(path))).through_symlink
    for path in (scratch / "real", scratch / "real" / "absent"):
        assert not (await mnt.path_state(str(path))).through_symlink
    (scratch / "dangling").symlink_to(scratch / "nowhere")
    state = await mnt.path_state(str(scratch / "dangling"))
    assert state.through_symlink and not state.exists


async def test_emptiness_of_directories_and_files(scratch: Path) -> None:
    assert await mnt.is_empty(str(scratch))
    (scratch / "file").write_bytes(b"")
    assert not await mnt.is_empty(str(scratch))
    assert await mnt.is_empty(str(scratch / "file"))
    (scratch / "file").write_bytes(b"x")
    assert not await mnt.is_empty(str(scratch / "file"))


async def test_create_makes_parents_and_leaves_what_is_there(scratch: Path) -> None:
    await mnt.create(str(scratch / "a" / "b"))
    assert (scratch / "a" / "b").is_dir()
    await mnt.create(str(scratch / "c" / "node"), file=True, mode=0o600)
    assert (scratch / "c" / "node").is_file() and (scratch / "c" / "node").stat().st_mode & 0o777 == 0o600
    (scratch / "c" / "node").write_bytes(b"kept")
    await mnt.create(str(scratch / "c" / "node"), file=True)
    assert (scratch / "c" / "node").read_bytes() == b"kept"


async def test_remove_empty_removes_only_what_holds_nothing(scratch: Path) -> None:
    (scratch / "empty").mkdir()
    (scratch / "full").mkdir()
    (scratch / "full" / "x").write_bytes(b"x")
    (scratch / "zero").write_bytes(b"")
    (scratch / "data").write_bytes(b"data")
    (scratch / "link").symlink_to(scratch / "full")
    assert await mnt.remove_empty(str(scratch / "empty")) and not (scratch / "empty").exists()
    assert await mnt.remove_empty(str(scratch / "zero")) and not (scratch / "zero").exists()
    assert await mnt.remove_empty(str(scratch / "never-was"))
    for kept in ("full", "data", "link"):
        assert not await mnt.remove_empty(str(scratch / kept))
        assert os.path.lexists(scratch / kept)
    assert (scratch / "full" / "x").read_bytes() == b"x"


async def test_canonical_resolves_links(scratch: Path) -> None:
    (scratch / "real").mkdir()
    (scratch / "link").symlink_to("real")
    assert await mnt.canonical(str(scratch / "link")) == str(scratch / "real")
