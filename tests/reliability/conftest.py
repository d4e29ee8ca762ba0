"""Reliability suite: the slow-test switch and the tally printed at the end of a run.

Long runs carry ``@pytest.mark.slow`` and run only with ``SPLATGEN_LONG_TESTS=1``. The tally (requests
sent, outcomes, faults injected, bad PLYs served) is printed in the terminal summary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Shared test modules: image_payloads.py and the like one level up, reliability_support.py here.
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from reliability_support import TALLY, fmt_counter  # noqa: E402

LONG_TESTS = os.environ.get("SPLATGEN_LONG_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG_TESTS:
        return
    skip = pytest.mark.skip(reason="long run: set SPLATGEN_LONG_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (TALLY.outcomes or TALLY.faults or TALLY.fuzz_examples):
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability tally")
    for scope, outcomes in sorted(TALLY.outcomes.items()):
        write(f"requests ({scope}): {sum(outcomes.values())}  " + fmt_counter(outcomes))
    if TALLY.faults:
        write(f"faults injected: {sum(TALLY.faults.values())}  " + fmt_counter(TALLY.faults))
    if TALLY.fuzz_examples:
        write(f"fuzz examples: {sum(TALLY.fuzz_examples.values())}  " + fmt_counter(TALLY.fuzz_examples))
    if TALLY.seconds_to_error:
        write(
            "seconds to typed error: "
            + ", ".join(f"{k}: {v:.1f}" for k, v in sorted(TALLY.seconds_to_error.items()))
        )
    write(f"bad PLYs served: {TALLY.bad_plys_served}")
