"""``python -m e2e.sim --backend loopfile [--scenario NAME ...] [--seed N]``: run the harness, print the summary.

Exit status: 0 when every scenario passed or was skipped and no leak was found,
1 on any failure or leak, 2 when the backend cannot run on this machine.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence

import anyio
from loguru import logger

from e2e.sim.profiles import PROFILES, profile_for
from e2e.sim.runner import run_all
from e2e.sim.scenarios import SCENARIOS


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="e2e-sim", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(PROFILES), default="loopfile")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=[],
                        help="run only these (repeatable; default: all)")
    parser.add_argument("--seed", type=int, default=None, help="seed for placement and kill delays")
    parser.add_argument("--keep", action="store_true", help="keep every cluster directory (logs) afterwards")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO", format="{time:HH:mm:ss} {level: <7} {message}")
    if os.geteuid() != 0:
        print("e2e-sim: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    profile = profile_for(args.backend)
    reason = profile.unavailable_reason()
    if reason:
        print(f"e2e-sim: backend {args.backend} cannot run here: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    logger.info("backend {}, seed {}", args.backend, seed)
    stats = anyio.run(run_all, profile, args.scenario or list(SCENARIOS), seed, args.keep)
    print(stats.summary(args.backend))
    print(f"seed: {seed}")
    return 1 if stats.failed or stats.leaks_found else 0


if __name__ == "__main__":
    raise SystemExit(main())
