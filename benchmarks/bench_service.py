"""Service overhead: one splat through the front end vs straight from the worker, and the memory check's cost.

Procedural backend, same prompt and seed on both paths (the worker's output is deterministic), requests
alternated so both paths see the same machine load. "Overhead" is each path's wall time minus the backend
time the worker reports, so the noise of the generation itself drops out of that column.

    python benchmarks/bench_service.py                 # 100K / 400K / 1M gaussians
    python benchmarks/bench_service.py --counts 100000 --reps 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import httpx
from common import front_env, percentiles, print_header, print_table, record_printed, say, service

from generation.front.memory_guard import MemoryGuard
from generation.front.worker_client import WorkerClient
from generation.front.worker_pool import WorkerPool
from generation.memory import rss_bytes
from generation.settings import FrontSettings

PROMPT = "a red ceramic teapot"
SECTION = "## Service overhead"


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def measure_paths(
    worker_url: str, front_url: str, front_cpu: Callable[[], float], count: int, reps: int
) -> list[object]:
    """Alternate direct and front-end requests for one gaussian count; return a table row."""
    payload = {"prompt": PROMPT, "seed": 1, "params": {"num_gaussians": count}}
    direct, via, direct_over, via_over, cpu = [], [], [], [], []
    size = 0
    with httpx.Client(timeout=600, trust_env=False) as client:
        for rep in range(reps + 1):  # the first pair warms both paths up and is not counted
            started = time.perf_counter()
            r = client.post(f"{worker_url}/generate", json=payload)
            wall = time.perf_counter() - started
            r.raise_for_status()
            backend = float(r.headers["x-generation-seconds"])
            size = len(r.content)
            if rep:
                direct.append(wall)
                direct_over.append(wall - backend)

            cpu_before = front_cpu()
            started = time.perf_counter()
            r = client.post(f"{front_url}/v1/generate", json=payload)
            wall = time.perf_counter() - started
            r.raise_for_status()
            if len(r.content) != size:
                raise RuntimeError(f"front end served {len(r.content)} bytes, the worker {size}")
            backend = float(r.headers["x-worker-seconds"])
            if rep:
                via.append(wall)
                via_over.append(wall - backend)
                cpu.append(front_cpu() - cpu_before)
    d50, d95 = percentiles(direct)
    f50, f95 = percentiles(via)
    do50 = percentiles(direct_over)[0]
    fo50 = percentiles(via_over)[0]
    return [
        f"{count:,}",
        f"{size / 1e6:.1f}",
        _ms(d50),
        _ms(d95),
        _ms(f50),
        _ms(f95),
        f50 / d50,
        _ms(do50),
        _ms(fo50),
        _ms(fo50 - do50),
        _ms(percentiles(cpu)[0]),
    ]


async def measure_memory_check(worker_url: str, calls: int) -> list[list[object]]:
    """MemoryGuard.check against the live worker vs a bare GET /health on the same loopback client."""
    settings = FrontSettings(workers=[worker_url])
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        workers = WorkerClient(settings, client)
        pool = WorkerPool([worker_url], workers, max_queue=1, retry_after_s=settings.retry_after_s)
        guard = MemoryGuard(settings, workers, pool)
        worker = pool.workers[0]

        async def health() -> None:
            (await client.get(f"{worker_url}/health", timeout=5.0)).raise_for_status()

        async def check() -> None:
            result = await guard.check(worker)
            if result.action != "ok":
                raise RuntimeError(f"memory check did not pass: {result.to_dict()}")

        async def own_rss() -> None:
            rss_bytes()

        rows = []
        baseline_p50 = float("nan")
        for name, call in (("GET /health (baseline)", health), ("MemoryGuard.check", check),
                           ("own RSS read (psutil)", own_rss)):  # fmt: skip
            for _ in range(20):
                await call()
            walls = []
            cpu_started = time.process_time()
            for _ in range(calls):
                started = time.perf_counter()
                await call()
                walls.append(time.perf_counter() - started)
            cpu = (time.process_time() - cpu_started) / calls
            p50, p95 = percentiles(walls)
            if name.startswith("GET /health"):
                baseline_p50 = p50
            rows.append([name, calls, _ms(p50), _ms(p95), _ms(cpu), p50 / baseline_p50])
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 400_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=15, help="timed requests per path and count")
    parser.add_argument("--checks", type=int, default=500, help="timed memory checks (and baseline calls)")
    parser.add_argument("--record", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args()

    # History previews render on a background thread after each response; on a small machine they would
    # steal CPU from the next (direct) request, so they are off: this measures the request path itself.
    with (
        service("worker") as worker,
        service("front", front_env(worker, SPLATGEN_HISTORY_PREVIEW_PX="0")) as front,
    ):
        rows = []
        for count in args.counts:
            reps = max(3, args.reps * 400_000 // max(count, 400_000)) if count > 400_000 else args.reps
            rows.append(measure_paths(worker.url, front.url, front.cpu_seconds, count, reps))
        print_header("Service overhead: front end vs worker direct (procedural backend)")
        print_table(
            ["gaussians", "PLY MB", "direct p50 ms", "direct p95 ms", "front p50 ms", "front p95 ms",
             "ratio p50", "direct overhead p50 ms", "front overhead p50 ms", "added by front ms",
             "front CPU/req ms"],
            rows,
        )  # fmt: skip
        say(
            "\nSame prompt and seed on both paths, requests alternated (one warm-up pair not counted). "
            "overhead = wall time minus the backend seconds the worker reports (X-Generation-Seconds / "
            "X-Worker-Seconds), so the generation's own noise drops out; 'added by front' = front overhead - "
            "direct overhead; front CPU is psutil's (10 ms ticks). History previews are off in this run."
        )
        check_rows = asyncio.run(measure_memory_check(worker.url, args.checks))
    print_header("Memory check cost (live worker on loopback)")
    print_table(["call", "calls", "p50 ms", "p95 ms", "client CPU/call ms", "p50 / baseline"], check_rows)
    say(
        f"\n{args.checks} calls each after 20 warm-up calls; CPU is the calling process's (the front end's share)."
    )
    record_printed(SECTION, args.record)


if __name__ == "__main__":
    main()
