"""The kubelet-free harness's own rules (e2e/sim), without a cluster: deadlines, declared capabilities, parameters.

The harness itself runs as its own lane (hack/e2e-sim, tests/e2e/test_sim.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import cast

import pytest

from csi.capabilities import controller_rpcs
from csi.cli.main import build_parser
from csi.cli.serve import config_from
from csi.config import Mode
from e2e.sim.cluster import Cluster
from e2e.sim.deadlines import TCG_FACTOR, Deadlines
from e2e.sim.driver import Caller, DriverInstance
from e2e.sim.kubelet import CSI_PLUGIN_DIR
from e2e.sim.nodes import SimNode
from e2e.sim.objects import Claim, StorageClass
from e2e.sim.profiles import GIB, PROFILES, Capability, CRpc, mismatch, mismatches, profile_for
from e2e.sim.roles import Provisioner, Resizer, creation_parameters
from e2e.sim.scenarios import SCENARIOS, ScenarioFailure, Skip
from e2e.sim.stats import Stats


def test_deadlines_stretch_under_tcg_only() -> None:
    host = Deadlines.for_environment({})
    lane = Deadlines.for_environment({"LOCALCSI_VMTEST": "1"})
    assert host == Deadlines()
    assert (lane.start_seconds, lane.scenario_seconds) == (host.start_seconds * TCG_FACTOR,
                                                           host.scenario_seconds * TCG_FACTOR)
    assert (host.factor, lane.factor) == (1.0, TCG_FACTOR)
    assert lane.scenario(many_volumes=True) == lane.scenario() * lane.many_volumes_factor


@pytest.mark.parametrize("backend", sorted(PROFILES))
def test_a_profile_carries_the_deadlines_it_is_given(backend: str) -> None:
    given = Deadlines(start_seconds=1.0, scenario_seconds=2.0)
    assert profile_for(backend, given).deadlines is given
    assert profile_for(backend).deadlines == Deadlines.for_environment()
    with pytest.raises(ValueError, match="unknown backend"):
        profile_for("nfs")


def test_creation_parameters_follow_the_provisioner() -> None:
    """Reserved keys are stripped and --extra-create-metadata keys added, as the external-provisioner does."""
    sc = StorageClass("sc", {"csi.storage.k8s.io/fstype": "xfs", "loopfile.localcsi.dev/provisioning": "thin"})
    claim = Claim("data", 1, sc, namespace="ns")
    params = creation_parameters(sc, claim, claim.pv_name)
    assert params == {
        "loopfile.localcsi.dev/provisioning": "thin",
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "ns",
        "csi.storage.k8s.io/pv/name": f"pvc-{claim.uid}",
    }
    assert str(CSI_PLUGIN_DIR) == "plugins/kubernetes.io/csi"


def sim_node(tmp_path: Path) -> SimNode:
    return SimNode("node-a", tmp_path, GIB, DriverInstance(tmp_path, [], Stats()))


def advertised(argv: list[str], mode: Mode) -> set[CRpc]:
    """What a driver started with ``argv`` advertises, computed by the driver's own CLI and capability code."""
    config = config_from(build_parser("serve").parse_args(["serve", "--endpoint", "unix:///x", *argv]), "0")
    return set(controller_rpcs(config.backend.features(), mode))


@pytest.mark.parametrize("backend", sorted(PROFILES))
def test_every_profile_declares_what_its_flags_give(backend: str, tmp_path: Path) -> None:
    """The declarations agree with the driver: a capability it stops advertising makes this, and the harness, fail."""
    profile = profile_for(backend)
    assert set(profile.capabilities) == set(Capability), "every capability is declared expected or absent"
    assert mismatches(profile, advertised(profile.driver_args(sim_node(tmp_path)), Mode.ALL)) == []
    controller = advertised(["--mode", "controller", *profile.controller_args()], Mode.CONTROLLER)
    assert mismatches(profile, controller, controller_mode=True) == []


def test_rawdisk_declares_no_expansion_and_loopfile_expects_every_capability() -> None:
    rawdisk, loopfile = profile_for("rawdisk"), profile_for("loopfile")
    assert not rawdisk.capabilities[Capability.ONLINE_EXPANSION]
    assert all(loopfile.capabilities.values())
    everything = {c.rpc for c in Capability if c.rpc is not None}
    assert "declares absent" in mismatch(rawdisk, Capability.ONLINE_EXPANSION, everything)
    assert "lacks CLONE_VOLUME" in mismatch(loopfile, Capability.CLONES, everything - {CRpc.CLONE_VOLUME})
    assert mismatch(loopfile, Capability.CLONES, set(), controller_mode=True) == ""  # controller mode serves no clones


def cluster_of(backend: str, advertises: set[CRpc], tmp_path: Path) -> Cluster:
    """A cluster that was never started, whose one node's provisioner learnt ``advertises``."""
    stats = Stats()
    cluster = Cluster(profile_for(backend), stats, random.Random(0), tmp_path)
    provisioner = Provisioner(sim_node(tmp_path), Caller(stats), "localcsi.dev")
    provisioner.controller_caps = advertises
    cluster.provisioners = {"node-a": provisioner}
    cluster.resizer = cast(Resizer, object())  # never reached: the capability decides first
    return cluster


@pytest.mark.anyio
async def test_a_scenario_skips_only_for_a_declared_absence(tmp_path: Path) -> None:
    everything = {c.rpc for c in Capability if c.rpc is not None}
    expansion = SCENARIOS["online-expansion"]
    with pytest.raises(Skip, match="rawdisk profile declares no online expansion"):
        await expansion(cluster_of("rawdisk", everything - {CRpc.EXPAND_VOLUME}, tmp_path))
    with pytest.raises(ScenarioFailure, match="lacks EXPAND_VOLUME"):
        await expansion(cluster_of("loopfile", everything - {CRpc.EXPAND_VOLUME}, tmp_path))
    with pytest.raises(ScenarioFailure, match="lacks CREATE_DELETE_SNAPSHOT"):
        await SCENARIOS["snapshot-restore"](cluster_of("rawdisk", everything - {CRpc.CREATE_DELETE_SNAPSHOT}, tmp_path))
    with pytest.raises(ScenarioFailure, match="declares absent"):
        await expansion(cluster_of("rawdisk", everything, tmp_path))
