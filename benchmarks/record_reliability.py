"""The reliability suite's tally (requests by outcome, faults injected, fuzz examples, bad PLYs served).

Runs ``pytest tests/reliability`` and prints what its terminal summary tallies, under the command, machine and
load; ``--record`` writes that as the "Reliability" section of benchmarks/RESULTS.md.

    python benchmarks/record_reliability.py [--long] [--record]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from common import REPO, print_header, record_printed, say

SECTION = "## Reliability"


def tally_lines(output: str) -> list[str]:
    """The lines of the suite's "reliability tally" section, then its result line."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^=+ reliability tally =+$", line)), None)
    tally: list[str] = []
    if start is not None:
        for line in lines[start + 1 :]:
            if line.startswith("==="):
                break
            tally.append(line)
    result = [line.strip("= ") for line in lines if re.match(r"^=+ .*\b(passed|failed|error)", line)]
    return tally + result[-1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="the long runs too (SPLATGEN_LONG_TESTS=1)")
    parser.add_argument("--record", action="store_true", help="write the tally into benchmarks/RESULTS.md")
    args = parser.parse_args()
    env = {**os.environ, **({"SPLATGEN_LONG_TESTS": "1"} if args.long else {})}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print_header("Reliability suite" + (" (long runs included)" if args.long else ""))
    say(
        "Real `splatgen worker` / `splatgen front` processes on loopback; `tests/reliability/faulty_worker.py`"
    )
    say("is a fault-injection test double speaking the worker's protocol. Every 200 is parsed and checked")
    say("(validator rules, finite values, SPZ-ready header, X-Gaussian-Count); every other answer must be a")
    say("typed 503 with Retry-After. The suite's own tally:")
    say()
    say("```")
    for line in tally_lines(done.stdout) or ["(no tally: the suite did not get that far)"]:
        say(line)
    say("```")
    if done.returncode != 0:
        say(f"\nThe suite exited with {done.returncode}: see the failures above the tally in its output.")
        print(done.stdout[-5000:], file=sys.stderr)
    record_printed(SECTION, args.record)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
