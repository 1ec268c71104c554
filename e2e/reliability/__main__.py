"""``python -m e2e.reliability [--quick]``: the whole reliability and security campaign; see docs/reliability.md.

Where each part runs: fuzz, crash, exhaustion (full backing filesystem), signatures, exposure and load run on
this machine against real driver processes; the kernel phase (a full thin pool and a full volume group through
the lvm driver, and every loop device taken) boots Debian's 6.1 kernel under qemu with hack/vmtest, because this
kernel has no device-mapper and its loop devices are shared. The full campaign runs every phase; --quick runs
all but the kernel phase.

Exit status: 0 when every phase passed (no lost write, leak, unexpected code or other finding),
1 on any finding, 2 when the campaign cannot run here (not root, no /dev/loop-control).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
from loguru import logger

from e2e.reliability import crash, exhaustion, exposure, fuzz, kernel, load, paths, signatures, states
from e2e.reliability.common import PhaseResult

#: (typed examples per RPC, raw examples per RPC, crash steps, load seconds)
BUDGETS = {"quick": (80, 40, 150, 15.0), "full": (400, 150, 400, 60.0)}
PHASES = ("fuzz", "crash", "exhaustion", "signatures", "exposure", "states", "paths", "load", "kernel")
#: The kernel phase boots the kernel lane (qemu TCG, minutes): the full campaign runs it, --quick does not.
QUICK_PHASES = PHASES[:-1]


def phase_runners(budget: str, seed: int) -> dict[str, Callable[[], Awaitable[PhaseResult]]]:
    typed, raw, steps, seconds = BUDGETS[budget]
    return {
        "fuzz": lambda: fuzz.run(typed, raw, seed),
        "crash": lambda: crash.run(steps, seed),
        "exhaustion": exhaustion.run,
        "signatures": signatures.run,
        "exposure": exposure.run,
        "states": states.run,
        "paths": paths.run,
        "load": lambda: load.run(seconds, seed),
        "kernel": kernel.run,
    }


async def campaign(names: Sequence[str], budget: str, seed: int) -> list[PhaseResult]:
    runners = phase_runners(budget, seed)
    results = []
    for name in names:
        logger.info("phase {} ...", name)
        started = time.monotonic()
        try:
            result = await runners[name]()
        except Exception as exc:
            logger.exception("phase {} crashed", name)
            result = PhaseResult(name)
            result.fail(f"the phase itself failed: {type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - started
        logger.info("phase {} {} in {:.1f} s", name, "passed" if result.ok else "FAILED", result.seconds)
        results.append(result)
    return results


def headline(results: list[PhaseResult]) -> dict[str, object]:
    by = {r.name: r.figures for r in results}
    fz, cr, ld, st = by.get("fuzz", {}), by.get("crash", {}), by.get("load", {}), by.get("states", {})
    pa = by.get("paths", {})
    return {
        "fuzz inputs (typed + raw)": fz.get("inputs", "-"),
        "crash steps / RPCs / restarts": f"{cr.get('steps', '-')} / {cr.get('rpcs_issued', '-')} / "
                                         f"{cr.get('driver_restarts', '-')}",
        "fault points exercised": ", ".join(cr.get("fault_points_exercised", [])) or "-",  # type: ignore[arg-type]
        "operations under load (p99 ms, RSS MiB before -> after)":
            f"{ld.get('operations', '-')} ({ld.get('p99_ms', '-')} ms, {ld.get('rss_before_mib', '-')} -> "
            f"{ld.get('rss_after_mib', '-')})",
        "acknowledged writes lost": cr.get("writes_lost", "-"),
        "leaks": cr.get("leaks", "-"),
        "kernel lane (thin pool, VG, loop devices)": by.get("kernel", {}).get("pytest_summary", "not run"),
        "storage states attacked (known open)": f"{st.get('attacks_run', '-')} "
                                                f"({st.get('known_open') or '-'})",
        "node paths attacked (held)": f"{pa.get('attacks_run', '-')} ({pa.get('held', '-')})",
        "unexpected codes": sum(int(str(by.get(p, {}).get("unexpected_codes", 0))) for p in ("fuzz", "load")),
        "findings": sum(len(r.findings) for r in results),
    }


def summary(results: list[PhaseResult], budget: str, seed: int) -> str:
    lines = [f"reliability campaign ({budget}, seed {seed})", "", "| phase | result | seconds |", "|---|---|---|"]
    lines += [f"| {r.name} | {'passed' if r.ok else 'FAILED'} | {r.seconds:.1f} |" for r in results]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline(results).items()]
    for r in results:
        lines += [f"FINDING [{r.name}] {f}" for f in r.findings]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reliability", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the bounded version CI runs on every change")
    parser.add_argument("--phase", action="append", choices=PHASES, default=[], help="run only these (repeatable)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every figure and finding here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO", format="{time:HH:mm:ss} {level: <7} {message}")
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        print("reliability: needs root and /dev/loop-control (loop devices, mounts)", file=sys.stderr)
        return 2
    budget = "quick" if args.quick else "full"
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    started = time.monotonic()
    results = anyio.run(campaign, args.phase or list(QUICK_PHASES if args.quick else PHASES), budget, seed)
    print(summary(results, budget, seed))
    print(f"total: {time.monotonic() - started:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"budget": budget, "seed": seed, "headline": headline(results),
                                         "phases": [r.__dict__ for r in results]}, indent=1, default=str))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
