"""Faults behind the front end: the worker dies, freezes, or answers garbage, truncated or corrupt splats.

Required every time: the front end never passes a bad PLY on, answers a typed 503 (with Retry-After) before
the client's own timeout (worker timeout plus margin, so a hang fails the test instead of stalling it), and
serves valid splats again once the worker recovers. Misbehaving answers come from faulty_worker.py (the
fault-injection test double); the kill and the freeze are done to a real ``splatgen worker`` process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_support import TALLY, FaultyWorker, classify, faulty_worker, free_port

from generation.testing import Service, running

WORKER_TIMEOUT_S = 3
# The memory check's own read of the worker has a fixed 5 s timeout; the client allows all of it and more.
CLIENT_TIMEOUT_S = WORKER_TIMEOUT_S + 5 + 10
SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "20000"}


def front_env(*urls: str) -> dict[str, str]:
    return {
        "SPLATGEN_WORKERS": ",".join(urls),
        "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.3",
        "SPLATGEN_WORKER_TIMEOUT_S": str(WORKER_TIMEOUT_S),
    }


def generate(front: Service, prompt: str = "a small wooden cup", seed: int = 1) -> httpx.Response:
    return httpx.post(
        f"{front.url}/v1/generate", json={"prompt": prompt, "seed": seed}, timeout=CLIENT_TIMEOUT_S
    )


def wait_for_front_health(front: Service, healthy: bool, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while (httpx.get(f"{front.url}/health", timeout=5).status_code == 200) != healthy:
        assert time.monotonic() < deadline, f"front end never became {'healthy' if healthy else 'unhealthy'}"
        time.sleep(0.1)


def generate_after_recovery(front: Service) -> httpx.Response:
    """The first request once the front end sees a healthy worker again."""
    wait_for_front_health(front, healthy=True)
    return generate(front, "a recovered teapot", seed=2)


@pytest.fixture(scope="module")
def faulty_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultyWorker, Service]]:
    tmp = tmp_path_factory.mktemp("faults")
    with faulty_worker(tmp) as worker, running("front", tmp, front_env(worker.url)) as front:
        yield worker, front


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("garbage", "degenerate_output"),
        ("truncated", "degenerate_output"),
        ("nan_all", "degenerate_output"),
        ("few", "degenerate_output"),
        ("server_error", "worker_unavailable"),
        ("cut_off", "worker_unavailable"),
        ("hang", "worker_unavailable"),
    ],
)
def test_a_bad_answer_is_refused_with_a_typed_error_then_the_worker_recovers(
    faulty_stack: tuple[FaultyWorker, Service], mode: str, expected: str
) -> None:
    worker, front = faulty_stack
    wait_for_front_health(front, healthy=True)
    before = worker.calls().get(mode, 0)
    worker.set_mode(mode)
    try:
        started = time.monotonic()
        assert classify(generate(front), TALLY, "faults") == expected
        TALLY.time_to_error(mode, time.monotonic() - started)
        injected = worker.calls().get(mode, 0) - before
    finally:
        worker.set_mode("ok")
    # A degenerate splat is retried once with another seed; a failed worker is not asked again.
    assert injected == (2 if expected == "degenerate_output" else 1)
    TALLY.faults[mode] += injected
    assert classify(generate_after_recovery(front), TALLY, "faults") == "ok"


def test_nan_gaussians_are_dropped_never_served(faulty_stack: tuple[FaultyWorker, Service]) -> None:
    worker, front = faulty_stack
    wait_for_front_health(front, healthy=True)
    clean = generate(front, seed=5)
    worker.set_mode("nan_some")
    try:
        r = generate(front, seed=5)
    finally:
        worker.set_mode("ok")
    TALLY.faults["nan_some"] += 1
    # classify parses the served bytes and fails on any NaN; the corrupted rows were cut out, not passed on.
    assert classify(clean, TALLY, "faults") == "ok"
    assert classify(r, TALLY, "faults") == "ok"
    assert 0 < int(r.headers["x-gaussian-count"]) < int(clean.headers["x-gaussian-count"])


def _post_in_thread(front: Service, out: list[httpx.Response | Exception]) -> threading.Thread:
    def run() -> None:
        try:
            out.append(generate(front, "an interrupted vase"))
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_worker_killed_mid_generation_then_restarted(tmp_path: Path) -> None:
    port = free_port()
    slow = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": "3"}
    worker = Service(["worker"], slow, port, tmp_path / "worker-1.log")
    try:
        worker.wait_healthy()
        with running("front", tmp_path, front_env(worker.url)) as front:
            results: list[httpx.Response | Exception] = []
            thread = _post_in_thread(front, results)
            worker.wait_generating()  # the request is inside the 3 s generation
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            TALLY.faults["killed"] += 1
            thread.join(CLIENT_TIMEOUT_S + 5)
            TALLY.time_to_error("killed (from the kill)", time.monotonic() - killed)
            assert isinstance(results[0], httpx.Response), results
            assert classify(results[0], TALLY, "faults") == "worker_unavailable"
            assert classify(generate(front), TALLY, "faults") == "worker_unavailable"
            worker.stop()

            worker = Service(["worker"], SMALL, port, tmp_path / "worker-2.log")
            worker.wait_healthy()
            assert classify(generate_after_recovery(front), TALLY, "faults") == "ok"
    finally:
        worker.stop()


def test_frozen_worker_times_out_then_recovers(tmp_path: Path) -> None:
    slow = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": "1"}
    with (
        running("worker", tmp_path, slow) as worker,
        running("front", tmp_path, front_env(worker.url)) as front,
    ):
        results: list[httpx.Response | Exception] = []
        thread = _post_in_thread(front, results)
        worker.wait_generating()
        os.kill(worker.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        TALLY.faults["frozen"] += 1
        try:
            thread.join(CLIENT_TIMEOUT_S + 5)
            TALLY.time_to_error("frozen (from the SIGSTOP)", time.monotonic() - frozen)
            assert isinstance(results[0], httpx.Response), results
            assert classify(results[0], TALLY, "faults") == "worker_unavailable"
            # While the worker stays frozen, new requests are refused at once, not queued behind it.
            assert classify(generate(front), TALLY, "faults") == "worker_unavailable"
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert classify(generate_after_recovery(front), TALLY, "faults") == "ok"
        assert classify(generate(front, "a second teapot", seed=3), TALLY, "faults") == "ok"
