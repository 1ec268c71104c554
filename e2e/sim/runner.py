"""Run scenarios, each on a fresh cluster, with a leak check after each; collect the summary."""

from __future__ import annotations

import random
import time
import traceback

import anyio
from loguru import logger

from e2e.sim.cluster import Cluster, running_cluster
from e2e.sim.profiles import BackendProfile
from e2e.sim.scenarios import MANY_VOLUMES, SCENARIOS, Skip
from e2e.sim.stats import ScenarioResult, Stats


async def run_one(profile: BackendProfile, name: str, stats: Stats, rng: random.Random,
                  keep: bool = False) -> ScenarioResult:
    started = time.monotonic()
    outcome, detail = "passed", ""
    leaks: tuple[str, ...] = ()
    setup = 0.0
    deadline = profile.deadlines.scenario(many_volumes=name in MANY_VOLUMES)
    try:
        async with running_cluster(profile, stats, rng, keep, many_volumes=name in MANY_VOLUMES) as cluster:
            setup = time.monotonic() - started
            try:
                with anyio.fail_after(deadline):
                    detail = await SCENARIOS[name](cluster)
            except Skip as exc:
                outcome, detail = "skipped", str(exc)
            except Exception as exc:
                outcome, detail = "failed", describe_failure(exc)
                logger.error("scenario {} failed:\n{}", name, traceback.format_exc())
                cluster.keep_root = True
                _log_driver_tails(cluster)
            leaks = tuple(await _cleanup_and_check(cluster, deadline))
            if leaks:
                outcome = "failed"
                cluster.keep_root = True
    except Exception as exc:
        outcome, detail = "failed", f"harness: {type(exc).__name__}: {exc}"
        logger.error("scenario {} could not run:\n{}", name, traceback.format_exc())
    result = ScenarioResult(name, outcome, time.monotonic() - started, detail, leaks, setup)
    stats.results.append(result)
    logger.info("{} {} in {:.1f} s (setup {:.1f} s) {}", name, outcome.upper(), result.seconds, setup, detail)
    return result


def describe_failure(exc: BaseException) -> str:
    """The first real cause, unwrapped from task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def _cleanup_and_check(cluster: Cluster, deadline_seconds: float) -> list[str]:
    """Delete what the scenario left through the sidecars' calls, then look for anything nobody owns."""
    try:
        with anyio.fail_after(deadline_seconds):
            await cluster.cleanup()
    except Exception as exc:
        logger.error("cleanup failed: {}", traceback.format_exc())
        return [f"cleanup failed: {type(exc).__name__}: {exc}", *await _safe_leaks(cluster)]
    return await _safe_leaks(cluster)


async def _safe_leaks(cluster: Cluster) -> list[str]:
    try:
        return await cluster.leaks()
    except Exception as exc:
        return [f"leak check failed: {type(exc).__name__}: {exc}"]


def _log_driver_tails(cluster: Cluster) -> None:
    logger.error("cluster kept at {} (driver logs: */driver.log)", cluster.root)


async def run_all(profile: BackendProfile, names: list[str], seed: int, keep: bool = False) -> Stats:
    stats = Stats()
    rng = random.Random(seed)
    for name in names:
        await run_one(profile, name, stats, rng, keep)
    return stats
