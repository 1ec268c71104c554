"""csi.memory: the driver caps glibc's malloc arenas unless the environment already does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = "from csi import memory\nprint(memory.limit_arenas())\nmemory.release_unused()\n"


def _limit(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True, env=env)
    return done.stdout.strip()


def test_arenas_are_capped_unless_the_environment_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _limit(env) == "True"
    assert _limit({**env, "MALLOC_ARENA_MAX": "8"}) == "False"  # the operator's setting wins
