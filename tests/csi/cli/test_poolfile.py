"""The pools file (csi/cli/poolfile.py): what ``localcsi serve --config`` reads, and each mistake named precisely."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from backends.loopfile.options import LoopfileOptions
from backends.lvm.options import LvmOptions
from backends.pools import PoolSpec
from csi.cli.poolfile import PoolFileError, load, pools_from

YAML = """\
default: bulk
pools:
  fast:
    backend: lvm
    vg: nvme
    thinpool: tp
    thin_overprovision: "2.5"
  bulk:
    backend: loopfile
    directory: /mnt/hdd/localcsi
"""
TOML = """\
default = "bulk"
[pools.fast]
backend = "lvm"
vg = "nvme"
thinpool = "tp"
thin_overprovision = 2.5
[pools.bulk]
backend = "loopfile"
directory = "/mnt/hdd/localcsi"
"""
EXPECTED = (PoolSpec("fast", LvmOptions(vg="nvme", thinpool="tp", thin_overprovision=2.5)),
            PoolSpec("bulk", LoopfileOptions(directory="/mnt/hdd/localcsi"), default=True))


@pytest.mark.parametrize(("name", "text"), [("pools.yaml", YAML), ("pools.yml", YAML), ("pools.toml", TOML)])
def test_yaml_and_toml_say_the_same(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    assert load(str(tmp_path / name)) == EXPECTED


def test_one_pool_is_the_default_without_saying_so() -> None:
    (only,) = pools_from({"pools": {"local": {"backend": "loopfile"}}}, "f.yaml")
    assert only == PoolSpec("local", LoopfileOptions())


@pytest.mark.parametrize(("data", "message"), [
    (["pools"], "f.yaml: expected a mapping with 'pools'"),
    ({"pool": {}}, "f.yaml: unknown key 'pool'"),
    ({"pools": {}}, "f.yaml: 'pools' must map pool names"),
    ({"pools": {"a": {"backend": "loopfile"}, "b": {"backend": "loopfile"}}},
     "f.yaml: 2 pools and none is the default"),
    ({"default": "c", "pools": {"a": {"backend": "loopfile"}}}, "f.yaml: default: no pool is named 'c' (pools: a)"),
    ({"default": 3, "pools": {"a": {"backend": "loopfile"}}}, "f.yaml: default: must be a pool name"),
    ({"pools": {"a": "loopfile"}}, "f.yaml: pool 'a': expected a mapping of settings"),
    ({"pools": {"a": {"vg": "x"}}}, "f.yaml: pool 'a': backend: required"),
    ({"pools": {"a": {"backend": "zfs"}}}, "f.yaml: pool 'a': backend: "),
    ({"pools": {"a": {"backend": "lvm", "volume_group": "x"}}}, "f.yaml: pool 'a': unknown setting 'volume_group'"),
    ({"pools": {"a": {"backend": "loopfile", "overcommit": "lots"}}}, "f.yaml: pool 'a': "),
    ({"pools": {"Fast_Pool": {"backend": "loopfile"}}}, "f.yaml: pool 'Fast_Pool': pool name 'Fast_Pool' must be"),
], ids=["not-a-mapping", "unknown-key", "no-pools", "two-without-default", "unknown-default", "default-not-a-name",
        "settings-not-a-mapping", "no-backend", "unknown-backend", "unknown-setting", "bad-value", "bad-name"])
def test_each_mistake_names_the_file_the_pool_and_the_field(data: object, message: str) -> None:
    with pytest.raises(PoolFileError) as caught:
        pools_from(data, "f.yaml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_file_that_cannot_be_used_says_why(tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="cannot read the pools file"):
        load(str(tmp_path / "absent.yaml"))
    (tmp_path / "pools.json").write_text("{}")
    with pytest.raises(PoolFileError, match=r"must end in \.yaml, \.yml or \.toml"):
        load(str(tmp_path / "pools.json"))
    (tmp_path / "bad.yaml").write_text("pools: [unclosed\n")
    with pytest.raises(PoolFileError, match="not valid YAML"):
        load(str(tmp_path / "bad.yaml"))
    (tmp_path / "bad.toml").write_text("pools = \n")
    with pytest.raises(PoolFileError, match="not valid TOML"):
        load(str(tmp_path / "bad.toml"))


def test_the_pools_files_in_the_docs_are_valid() -> None:
    """docs/pools.md's worked examples, read as the driver reads them."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "pools.md").read_text()
    files = [block for block in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL) if block.lstrip("# \n").find(
        "pools:") >= 0 and "kind:" not in block]
    assert len(files) == 2
    for text in files:
        specs = pools_from(yaml.safe_load(text), "docs/pools.md")
        assert sum(1 for spec in specs if spec.default) == 1
