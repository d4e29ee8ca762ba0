"""Memory stability: N generations through the front end, RSS of every process sampled after each one.

Two runs on fresh processes: without /cleanup, and with a POST /cleanup to the worker every K generations.
The slope of RSS over generation number (least squares on the medians of 20 consecutive blocks, after a
warm-up) is reported per 100 generations with its standard error; "flat" means the slope is within two standard errors of zero or under 1 MB per
100 generations. The front end keeps the last ``SPLATGEN_HISTORY_SIZE`` PLYs (default 50) in RAM for the
dashboard by design, so its RSS climbs until that history is full; the default warm-up (100) starts the
fit after it.

    python benchmarks/bench_memory.py                       # 500 generations of 50K gaussians, twice
    python benchmarks/bench_memory.py --generations 100 --gaussians 20000 --warmup 20 --history-size 5
"""

from __future__ import annotations

import argparse

import httpx
import numpy as np
from common import Service, front_env, print_header, print_table, record_printed, say, service, slope_per

PROMPTS = (
    "a red ceramic teapot", "a wooden chair", "a blue vintage bicycle", "a small green frog",
    "a stack of three books", "a golden trophy cup", "a brown mushroom", "a steel sword",
)  # fmt: skip
_MB = 1024 * 1024
# Under this many MB per 100 generations a slope counts as flat even when the fit is very tight.
FLAT_MB_PER_100 = 1.0
BLOCKS = 20
SECTION = "## Memory stability"


def block_slope(points: list[tuple[int, float]], blocks: int = BLOCKS) -> tuple[float, float]:
    """Slope per 100 generations, fitted to block medians.

    Successive RSS samples are not independent (the heap drifts and settles), so a fit to every sample
    understates its error; medians of consecutive blocks are close to independent.
    """
    size = max(1, len(points) // blocks)
    xs, ys = [], []
    for start in range(0, len(points) - size + 1, size):
        block = points[start : start + size]
        xs.append(float(np.median([i for i, _ in block])))
        ys.append(float(np.median([mb for _, mb in block])))
    return slope_per(xs, ys, per=100)


def run(
    generations: int, gaussians: int, cleanup_every: int, warmup: int, extra_front_env: dict[str, str]
) -> list[list[object]]:
    """One run on fresh processes; return a table row per process."""
    env = {"SPLATGEN_PROCEDURAL_GAUSSIANS": str(gaussians)}
    samples: dict[str, list[tuple[int, float]]] = {"worker": [], "front": []}
    with service("worker", env) as worker, service("front", front_env(worker, **extra_front_env)) as front:
        processes: dict[str, Service] = {"worker": worker, "front": front}
        failures = 0
        with httpx.Client(timeout=120, trust_env=False) as http:
            for i in range(1, generations + 1):
                payload = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}
                r = http.post(f"{front.url}/v1/generate", json=payload)
                failures += r.status_code != 200
                if cleanup_every and i % cleanup_every == 0:
                    http.post(f"{worker.url}/cleanup").raise_for_status()
                for name, proc in processes.items():
                    samples[name].append((i, proc.rss() / _MB))
    if failures:
        raise RuntimeError(f"{failures} of {generations} generations failed; the run is not a memory run")
    label = f"every {cleanup_every}" if cleanup_every else "never"
    rows = []
    for name, points in samples.items():
        kept = [(i, mb) for i, mb in points if i > warmup]
        slope, stderr = block_slope(kept)
        flat = abs(slope) <= max(2 * stderr, FLAT_MB_PER_100)
        first = kept[0][1]
        rows.append([label, name, generations, f"{first:.1f}", f"{kept[-1][1]:.1f}",
                     f"{max(mb for _, mb in kept):.1f}", f"{slope:+.2f}", f"{stderr:.2f}",
                     "yes" if flat else "NO"])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--gaussians", type=int, default=50_000)
    parser.add_argument("--cleanup-every", type=int, default=10, help="generations between /cleanup calls")
    parser.add_argument("--warmup", type=int, default=100, help="first generations left out of the fit")
    parser.add_argument(
        "--history-size",
        type=int,
        default=None,
        help="SPLATGEN_HISTORY_SIZE for the front end (default: its own)",
    )
    parser.add_argument(
        "--front-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the front end, repeatable (e.g. MALLOC_ARENA_MAX=2)",
    )  # fmt: skip
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.generations <= args.warmup + 3:
        parser.error("--generations must exceed --warmup by at least 3")

    extra = dict(item.split("=", 1) for item in args.front_env)
    if args.history_size is not None:
        extra["SPLATGEN_HISTORY_SIZE"] = str(args.history_size)
    rows = run(args.generations, args.gaussians, 0, args.warmup, extra)
    rows += run(args.generations, args.gaussians, args.cleanup_every, args.warmup, extra)
    print_header(
        f"Memory stability: {args.generations} generations of {args.gaussians:,} gaussians through the front end"
        + (f" (front env: {', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")
    )
    print_table(
        ["/cleanup", "process", "generations", f"RSS MB after {args.warmup}", "RSS MB at end", "RSS MB max",
         "slope MB/100 gen", "std err", "flat"],
        rows,
    )  # fmt: skip
    say(
        f"\nslope: least squares over the medians of {BLOCKS} blocks of generations after the first {args.warmup}; "
        "flat = within "
        f"2 standard errors of zero or under {FLAT_MB_PER_100:g} MB per 100 generations. The front end keeps "
        "the last SPLATGEN_HISTORY_SIZE PLYs in RAM for the dashboard by design: its RSS climbs until that "
        "history is full."
    )
    record_printed(SECTION, args.record)


if __name__ == "__main__":
    main()
