"""Throughput: generations per minute through the front end, 1 and 2 workers, concurrency 1 / 4 / 8.

``SPLATGEN_PROCEDURAL_DELAY_S`` stands in for GPU time (the worker sleeps under its generation lock), with a
small gaussian count so the CPU work around it stays small. The ideal is ``workers / delay`` generations per
second; with fewer clients than workers the ceiling is ``min(workers, clients) / delay``, and the efficiency
column compares against that ceiling.

    python benchmarks/bench_throughput.py
    python benchmarks/bench_throughput.py --delay 2 --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections import Counter

import httpx
from common import front_env, print_header, print_table, record_printed, say, service

SECTION = "## Throughput"


def drive(front_url: str, clients: int, seconds: float, warmup: float) -> tuple[Counter[str], int, float]:
    """``clients`` threads send back-to-back requests; return outcomes, served in the window, and the rate/s.

    The window starts after ``warmup`` (the queue fills) and ends at the deadline; requests still in
    flight then are finished but not counted, so neither the ramp-up nor the drain skews the rate.
    """
    outcomes: Counter[str] = Counter()
    done_at: dict[str, list[float]] = {}
    lock = threading.Lock()
    started = time.perf_counter()
    window_start = started + warmup
    deadline = window_start + seconds

    def client(index: int) -> None:
        with httpx.Client(timeout=300, trust_env=False) as http:
            n = 0
            while time.perf_counter() < deadline:
                payload = {"prompt": f"a wooden chair {index}-{n}", "seed": n}
                r = http.post(f"{front_url}/v1/generate", json=payload)
                with lock:
                    outcomes["ok" if r.status_code == 200 else error_code(r)] += 1
                    if r.status_code == 200:
                        done_at.setdefault(r.headers["x-worker"], []).append(time.perf_counter())
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A worker finishes one generation at a time, so its own completions never bunch up: its rate is
    # (completions - 1) / (last - first) inside the window, free of edge quantisation; the sum is the rate.
    served, rate = 0, 0.0
    for times in done_at.values():
        inside = sorted(t for t in times if window_start <= t <= deadline)
        served += len(inside)
        if len(inside) > 1:
            rate += (len(inside) - 1) / (inside[-1] - inside[0])
    return outcomes, served, rate


def error_code(response: httpx.Response) -> str:
    try:
        return f"{response.status_code} {response.json().get('error')}"
    except ValueError:
        return f"{response.status_code} (not JSON)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=1.0, help="simulated GPU seconds per generation")
    parser.add_argument("--gaussians", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per configuration")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the window opens")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()

    worker_env = {
        "SPLATGEN_PROCEDURAL_DELAY_S": str(args.delay),
        "SPLATGEN_PROCEDURAL_GAUSSIANS": str(args.gaussians),
    }
    rows = []
    for n_workers in args.workers:
        with contextlib.ExitStack() as stack:
            workers = [stack.enter_context(service("worker", worker_env)) for _ in range(n_workers)]
            env = front_env(*workers, SPLATGEN_MAX_QUEUE=str(max(args.clients) * 2))
            front = stack.enter_context(service("front", env))
            with httpx.Client(timeout=60, trust_env=False) as http:  # warm every worker up once
                for _ in workers:
                    http.post(f"{front.url}/v1/generate", json={"prompt": "warm up"}).raise_for_status()
            for clients in args.clients:
                outcomes, in_window, rate = drive(front.url, clients, args.seconds, args.warmup)
                per_minute = rate * 60
                ideal = n_workers / args.delay * 60
                ceiling = min(n_workers, clients) / args.delay * 60
                errors = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()) if k != "ok") or "none"
                rows.append([n_workers, clients, sum(outcomes.values()), in_window, per_minute, ideal, ceiling,
                             per_minute / ceiling, errors])  # fmt: skip
    print_header(
        f"Throughput through the front end (procedural, {args.gaussians:,} gaussians, "
        f"{args.delay:g} s simulated GPU time)"
    )
    print_table(
        ["workers", "clients", "requests", f"served in {args.seconds:g} s window", "gen/min", "ideal gen/min (workers/delay)",
         "ceiling gen/min (min(workers, clients)/delay)", "efficiency vs ceiling", "errors"],
        rows,
    )  # fmt: skip
    efficiency = [float(row[7]) for row in rows]
    say(
        f"\nRates per worker between its first and last completion inside a {args.seconds:g} s window opened "
        f"after {args.warmup:g} s of load; clients send back to back. Efficiency vs ceiling: "
        f"{min(efficiency):.0%} to {max(efficiency):.0%}."
    )
    record_printed(SECTION, args.record)


if __name__ == "__main__":
    main()
