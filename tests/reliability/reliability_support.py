"""Shared by the reliability tests: answer checks, the fault-injecting worker launcher, and the tally."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from diagnostics import PlyFormatError, Splat
from diagnostics.gates import check_splat
from generation.testing import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Every 503 the front end may give; anything else in the 5xx range is a bug.
TYPED_503 = frozenset({"memory_pressure", "overloaded", "timeout", "worker_unavailable", "degenerate_output"})


@dataclass
class Tally:
    """What the suite did, for RESULTS.md: requests by outcome, faults injected, bad PLYs served."""

    # Outcomes per part of the suite ("load", "faults", ...).
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    bad_plys_served: int = 0
    fuzz_examples: Counter[str] = field(default_factory=Counter)
    # Slowest seconds from request to typed error, per fault (observed, never asserted on).
    seconds_to_error: dict[str, float] = field(default_factory=dict)

    def time_to_error(self, fault: str, seconds: float) -> None:
        self.seconds_to_error[fault] = max(seconds, self.seconds_to_error.get(fault, 0.0))


TALLY = Tally()


def fmt_counter(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def ply_problems(content: bytes, declared_count: str | None = None) -> list[str]:
    """Why these bytes must not reach a miner (empty list: a PLY the validators and SPZ accept)."""
    try:
        splat = Splat.from_ply_bytes(content)
    except PlyFormatError as exc:
        return [f"unreadable: {exc}"]
    problems = [f"{f.code}: {f.message}" for f in check_splat(splat)]
    lines = content[: content.index(b"end_header\n")].decode("ascii").splitlines()
    if lines[1:3] != ["format binary_little_endian 1.0", f"element vertex {len(splat)}"]:
        problems.append(f"header not SPZ-ready: {lines[1:3]}")
    if any(not line.startswith("property float ") for line in lines[3:]):
        problems.append("a property is not 'property float'")
    if declared_count is not None and int(declared_count) != len(splat):
        problems.append(f"X-Gaussian-Count {declared_count} but {len(splat)} gaussians")
    return problems


def classify(response: httpx.Response, tally: Tally | None = None, scope: str = "other") -> str:
    """``"ok"`` for a valid PLY, the error code for a typed 503; raise AssertionError for anything else.

    With a tally, the outcome is counted under ``scope`` and a bad PLY is counted before the assertion.
    """
    if response.status_code == 200:
        problems = ply_problems(response.content, response.headers.get("x-gaussian-count"))
        if problems and tally is not None:
            tally.bad_plys_served += 1
        assert not problems, f"a bad PLY was served: {problems}"
        outcome = "ok"
    else:
        assert response.status_code == 503, f"{response.status_code}: {response.text[:300]}"
        assert response.headers["content-type"].startswith("application/json"), response.headers
        body = response.json()
        assert body["error"] in TYPED_503, body
        assert body["message"], body
        assert int(response.headers["retry-after"]) > 0
        outcome = str(body["error"])
    if tally is not None:
        tally.outcomes.setdefault(scope, Counter())[outcome] += 1
    return outcome


@dataclass
class FaultyWorker:
    """A running faulty_worker.py process (the fault-injection test double)."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def set_mode(self, mode: str) -> None:
        httpx.post(f"{self.url}/fault", json={"mode": mode}, timeout=5).raise_for_status()

    def calls(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/fault", timeout=5).json()["calls"])


@contextlib.contextmanager
def faulty_worker(tmp_path: Path, mode: str = "ok", gaussians: int = 20_000) -> Iterator[FaultyWorker]:
    """Start faulty_worker.py (the fault-injection test double) on a free loopback port; stop it after."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPLATGEN_FAULT_MODE": mode,
           "SPLATGEN_PROCEDURAL_GAUSSIANS": str(gaussians)}  # fmt: skip
    with (tmp_path / f"faulty-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "faulty_worker.py"), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = FaultyWorker(proc, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / f"faulty-{port}.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{worker.url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the faulty worker did not start"
            time.sleep(0.1)
        yield worker
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
