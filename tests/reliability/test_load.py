"""Load: 8 concurrent clients against one worker behind a small queue.

Every answer must be a valid PLY (parsed, validator rules, SPZ header, finite) or a typed 503 with
Retry-After. The counts must add up on both sides: what the clients were served equals what the front
end recorded as served and what the worker generated. 8 x 25 requests by default, 8 x 200 with
``SPLATGEN_LONG_TESTS=1``.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from reliability_support import TALLY, classify

from generation.testing import running

CLIENTS = 8
WORKER_ENV = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "10000", "SPLATGEN_PROCEDURAL_DELAY_S": "0.05"}


@pytest.mark.parametrize("per_client", [25, pytest.param(200, marks=pytest.mark.slow)])
def test_every_answer_is_a_valid_ply_or_a_typed_503(tmp_path: Path, per_client: int) -> None:
    with running("worker", tmp_path, WORKER_ENV) as worker:
        front_env = {
            "SPLATGEN_WORKERS": worker.url,
            "SPLATGEN_MAX_QUEUE": "2",
            "SPLATGEN_QUEUE_TIMEOUT_S": "2",
            "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.5",
        }
        with running("front", tmp_path, front_env) as front:
            outcomes: Counter[str] = Counter()
            scope = f"load {CLIENTS}x{per_client}"
            errors: list[str] = []
            lock = threading.Lock()

            def client(index: int) -> None:
                with httpx.Client(timeout=60) as http:
                    for n in range(per_client):
                        payload = {"prompt": f"a ceramic vase number {index}-{n}", "seed": n}
                        try:
                            response = http.post(f"{front.url}/v1/generate", json=payload)
                            outcome = classify(response, TALLY, scope)
                        except (AssertionError, httpx.HTTPError) as exc:
                            outcome = "invalid"
                            with lock:
                                errors.append(f"{type(exc).__name__}: {exc}")
                        with lock:
                            outcomes[outcome] += 1

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

            assert not errors, errors[:5]
            assert sum(outcomes.values()) == CLIENTS * per_client
            assert set(outcomes) <= {"ok", "overloaded", "timeout"}, outcomes
            # One worker, a queue of 2 and 8 clients: some are served and some are refused.
            assert outcomes["ok"] > 0 and outcomes["overloaded"] > 0, outcomes
            status = httpx.get(f"{front.url}/status").json()
            assert status["outcomes"].get("ok", 0) == outcomes["ok"], status["outcomes"]
            # No generation was lost or served twice: the worker made exactly what the clients got.
            assert httpx.get(f"{worker.url}/health").json()["generations"] == outcomes["ok"]
            assert status["queue_depth"] == 0
