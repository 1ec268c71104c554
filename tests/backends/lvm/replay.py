"""Replays LVM commands recorded in the kernel lane (tests/data/lvm/*.jsonl) through a FakeRunner.

Each recorded command answers, in order, the calls with the same argv (the
``--config`` value left out); the last answer repeats. A command the recording
never saw fails the test, naming the argv.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

from backends.system.testing import FakeRunner

DATA = Path(__file__).resolve().parents[2] / "data" / "lvm"

Answer = tuple[int, str, str]


def load(name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def key(argv: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    args = list(argv)
    if len(args) > 2 and args[1] == "--config":
        del args[1:3]
    return tuple(args)


class Replay:
    def __init__(self, records: list[dict[str, object]]) -> None:
        self.answers: dict[tuple[str, ...], deque[Answer]] = {}
        for record in records:
            argv = record["argv"]
            assert isinstance(argv, list)
            answer = (int(str(record["returncode"])), str(record["stdout"]), str(record["stderr"]))
            self.answers.setdefault(key(argv), deque()).append(answer)

    def __call__(self, argv: tuple[str, ...]) -> Answer:
        queue = self.answers.get(key(argv))
        if not queue:
            raise AssertionError(f"command not in the recording: {argv}")
        return queue.popleft() if len(queue) > 1 else queue[0]

    def runner(self) -> FakeRunner:
        return FakeRunner(self)


def recorded_vg(records: list[dict[str, object]]) -> str:
    for record in records:
        argv = record["argv"]
        assert isinstance(argv, list)
        if argv[0] == "vgs":
            return str(argv[-1])
    raise AssertionError("no vgs call in the recording")
