"""The container lane: the image builds from the unchanged Containerfile and the driver works inside it.

hack/image-test builds a Debian base with debootstrap (cached after the first run), builds the image, runs
`localcsi serve` in a container with host /dev, loop-device cgroup rules and an rshared kubelet-style directory,
and drives probe, create, attach, stage, publish, a write from the host, unpublish, unstage, detach and delete.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.deploy.support import ROOT


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_builds_and_serves_a_volume_lifecycle() -> None:
    result = subprocess.run([str(ROOT / "hack/image-test")], capture_output=True, text=True, timeout=1400, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "lifecycle ok" in result.stderr
