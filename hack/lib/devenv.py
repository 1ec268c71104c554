"""The repository's virtualenv for the Python commands in hack/, set up on first use as hack/test does.

A fresh clone has no ``.venv``: running ``hack/reliability`` or ``hack/e2e-sim`` there used to end in
``ModuleNotFoundError``. :func:`python` answers the venv's interpreter once the modules a command needs
import there; otherwise it runs ``hack/setup --dev`` first (a few minutes: Debian packages and the venv), and
when that cannot run, says exactly what to run and exits 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def usable(interpreter: Path, modules: Sequence[str]) -> bool:
    if not interpreter.exists():
        return False
    check = subprocess.run([str(interpreter), "-c", "import " + ", ".join(modules)], cwd=REPO,
                           capture_output=True, check=False, timeout=120)
    return check.returncode == 0


def python(command: str, modules: Sequence[str]) -> str:
    """The interpreter that runs ``command`` (its name, for messages), with ``modules`` importable."""
    interpreter = REPO / ".venv" / "bin" / "python"
    if usable(interpreter, modules):
        return str(interpreter)
    setup = REPO / "hack" / "setup"
    print(f"{command}: {interpreter} is missing or lacks {', '.join(modules)}; running hack/setup --dev first "
          "(Debian packages and the virtualenv, a few minutes)", file=sys.stderr, flush=True)
    if os.geteuid() != 0:
        print(f"{command}: hack/setup needs root: run `sudo hack/setup --dev`, then {command} again",
              file=sys.stderr)
        raise SystemExit(2)
    if subprocess.run([str(setup), "--dev"], cwd=REPO, check=False).returncode != 0 or \
            not usable(interpreter, modules):
        print(f"{command}: hack/setup --dev did not leave a usable {interpreter}; fix what it reported, run "
              f"`hack/setup --dev` again, then {command}", file=sys.stderr)
        raise SystemExit(2)
    return str(interpreter)
