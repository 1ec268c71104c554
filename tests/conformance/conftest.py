"""Shows the conformance suite's own counts in the terminal summary of the outer pytest run."""

from __future__ import annotations

import pytest

RESULTS = pytest.StashKey[list[str]]()


@pytest.fixture
def conformance_results(pytestconfig: pytest.Config) -> list[str]:
    return pytestconfig.stash.setdefault(RESULTS, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(RESULTS, [])
    if lines:
        terminalreporter.section("CSI conformance suite")
        for line in lines:
            terminalreporter.write_line(line)
