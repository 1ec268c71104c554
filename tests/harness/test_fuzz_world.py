"""The fuzz phase's escape check (e2e/reliability/fuzz.py): it counts what its driver could have done, nothing else.

Other processes on a CI machine write /etc, mount and attach loop devices while the phase runs: those must not
be findings, and an escape of the phase's own driver must be one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from e2e import leaks
from e2e.reliability.common import PhaseResult, ScratchNode
from e2e.reliability.fuzz import NAMED_PATHS, TOKEN, WorldSnapshot, _ours, compare_world
from e2e.sim.driver import DriverInstance
from e2e.sim.stats import Stats

ROOT = Path("/tmp/rel-fuzz-x1")
NODE = ScratchNode(ROOT, DriverInstance(ROOT, [], Stats()))
OUR_LOOP = "7:3"
BEFORE = WorldSnapshot(decoy={}, root_names={"kubelet", "storage"}, named=dict.fromkeys(NAMED_PATHS, (1, 2, 3, 4)),
                       tokened=set(), mounts=Counter(), loops=set())


def findings(after: WorldSnapshot) -> list[str]:
    result = PhaseResult("fuzz")
    compare_world(BEFORE, after, NODE, result)
    return result.findings


def test_nothing_changed_is_no_finding() -> None:
    assert findings(BEFORE) == []


def test_a_mount_of_our_volume_outside_the_kubelet_dir_is_an_escape() -> None:
    mounted = leaks.Mount("/etc/cron.d", "/", OUR_LOOP)
    assert _ours(mounted, NODE, {OUR_LOOP})
    assert findings(replace(BEFORE, mounts=Counter([mounted]))) == [
        "mounts appeared outside the kubelet dir: ['/etc/cron.d']"]
    decoy = leaks.Mount("/var/lib/x", f"{ROOT}/outside-{TOKEN}/dir", "0:42")  # a bind of the planted decoy
    assert _ours(decoy, NODE, set())


def test_what_other_processes_mount_is_not_ours() -> None:
    assert not _ours(leaks.Mount("/var/lib/docker/overlay2/abc/merged", "/", "0:99"), NODE, {OUR_LOOP})
    assert not _ours(leaks.Mount("/run/user/1000", "/", "0:51"), NODE, {OUR_LOOP})
    inside = leaks.Mount(f"{ROOT}/kubelet/pods/p1/mount", "/", OUR_LOOP)
    assert findings(replace(BEFORE, mounts=Counter([inside]))) == []  # where the driver may mount


def test_a_changed_named_path_or_a_new_token_entry_is_a_finding() -> None:
    named = {**BEFORE.named, "/etc/passwd": (1, 2, 3, 5)}
    assert findings(replace(BEFORE, named=named)) == ["paths the fuzzer named changed: ['/etc/passwd']"]
    assert findings(replace(BEFORE, tokened={f"/etc/{TOKEN}"})) == [f"entries appeared: ['/etc/{TOKEN}']"]


def test_loop_devices_count_only_over_files_the_phase_could_have_named() -> None:
    escaped = replace(BEFORE, loops={f"{ROOT}/outside-{TOKEN}/file", f"{NODE.data_dir}/lcv-x.img"})
    outside = f"{ROOT}/outside-{TOKEN}/file"
    assert findings(escaped) == [f"loop devices attached to files outside the data dir: ['{outside}']"]
