"""Counters for the end-of-run summary: operations, faults, leaks, bytes verified."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    outcome: str  # "passed", "failed", "skipped"
    seconds: float
    detail: str = ""
    leaks: tuple[str, ...] = ()
    #: Of ``seconds``, the time it took to bring the cluster up (storage prepared, drivers started, registered).
    setup_seconds: float = 0.0


@dataclass
class Stats:
    """Mutable tallies shared by every role in one run."""

    operations: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    bytes_verified: int = 0
    results: list[ScenarioResult] = field(default_factory=list)

    def operation(self, rpc: str) -> None:
        self.operations[rpc] += 1

    def error(self, rpc: str, code: str) -> None:
        self.errors[f"{rpc}:{code}"] += 1

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def verified(self, count: int) -> None:
        self.bytes_verified += count

    @property
    def leaks_found(self) -> int:
        return sum(len(r.leaks) for r in self.results)

    @property
    def failed(self) -> bool:
        return any(r.outcome == "failed" for r in self.results)

    def summary(self, backend: str) -> str:
        lines = [f"e2e-sim summary (backend {backend})"]
        for r in self.results:
            extra = f" - {r.detail}" if r.detail else ""
            timing = f"{r.seconds:6.1f} s (setup {r.setup_seconds:5.1f} s)"
            lines.append(f"  {r.outcome.upper():7} {r.name:28} {timing}{extra}")
            lines.extend(f"          leak: {leak}" for leak in r.leaks)
        counts = Counter(r.outcome for r in self.results)
        lines.append(
            f"scenarios: {len(self.results)} ({counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped)"
        )
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items()))
        lines.append(f"operations issued: {sum(self.operations.values())} ({top})")
        lines.append(f"retries: {self.retries}; error answers: {dict(sorted(self.errors.items()))}")
        lines.append(f"faults injected: {sum(self.faults.values())} {dict(sorted(self.faults.items()))}")
        lines.append(f"leaks found: {self.leaks_found}")
        lines.append(f"bytes verified: {self.bytes_verified}")
        lines.append(f"time: {sum(r.seconds for r in self.results):.1f} s in scenarios "
                     f"({sum(r.setup_seconds for r in self.results):.1f} s bringing clusters up)")
        return "\n".join(lines)
