"""The kind cluster config, the e2e overlays and hack/kind-e2e agree (kind itself cannot run offline)."""

from __future__ import annotations

import re

import yaml

from tests.deploy.support import ROOT, check_manifests

cm = check_manifests()
SCRIPT = (ROOT / "hack/kind-e2e").read_text()


def script_value(name: str) -> str:
    match = re.search(rf"^{name}=(.+)$", SCRIPT, re.MULTILINE)
    assert match, f"{name}= not found in hack/kind-e2e"
    return match.group(1)


def test_workers_see_host_dev_and_their_own_loopfile_directory() -> None:
    config = yaml.safe_load((ROOT / "e2e/kind/cluster.yaml").read_text())
    cluster, host_dir = script_value("CLUSTER"), script_value("HOST_DIR")
    assert config["name"] == cluster
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    # kind names workers <cluster>-worker, <cluster>-worker2, ...
    names = [f"{cluster}-worker{'' if i == 0 else i + 1}" for i in range(len(workers))]
    assert (
        script_value("WORKERS")
        == "(" + " ".join(f'"${{CLUSTER}}-{n.removeprefix(cluster + "-")}"' for n in names) + ")"
    )
    for name, worker in zip(names, workers, strict=True):
        mounts = {m["containerPath"]: m["hostPath"] for m in worker["extraMounts"]}
        assert mounts["/dev"] == "/dev"
        assert mounts["/var/lib/localcsi"] == f"{host_dir}/{name}"


def test_e2e_overlays_name_per_node_storage_and_the_loaded_image() -> None:
    image = script_value("IMAGE")
    for backend in cm.BACKENDS:
        docs = cm.render(cm.Target(ROOT / "e2e/kind/overlays" / backend))
        node = next(c for c in cm.driver_containers(docs) if c.flag("mode") == "all")
        assert node.spec["image"] == image
        if backend == "lvm":
            assert node.flag("lvm-vg") == "localcsi-$(NODE_ID)"  # vgcreate localcsi-<node> in hack/kind-e2e
            assert 'vgcreate -q "localcsi-${node}"' in SCRIPT
        if backend == "rawdisk":
            assert node.flag("rawdisk-device") == "/dev/localcsi-e2e/$(NODE_ID)/*"
            assert '"/dev/localcsi-e2e/${node}/disk${disk}"' in SCRIPT
