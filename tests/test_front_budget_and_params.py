"""Over real HTTP: a result larger than the whole history budget is not kept (the rest stays), and a
gaussian count the request fixed, under the gates, is refused at once, never retried with another seed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from test_front import assert_typed, assert_valid_ply, front_env

from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "8000"}
BUDGET_MB = 2
PLY_BYTES_PER_GAUSSIAN = 17 * 4  # 17 float columns


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("budget")
    env = {"SPLATGEN_HISTORY_MEMORY_MAX_MB": str(BUDGET_MB), "SPLATGEN_HISTORY_PREVIEW_PX": "0"}
    with running("worker", tmp, SMALL) as worker, running("front", tmp, front_env(worker, **env)) as front:
        yield worker, front


def generate(front: Service, prompt: str, **params: int) -> httpx.Response:
    return httpx.post(f"{front.url}/v1/generate", json={"prompt": prompt, "params": params}, timeout=120)


def test_a_result_over_the_whole_budget_keeps_its_row_not_its_ply(stack: tuple[Service, Service]) -> None:
    _, front = stack
    small = [generate(front, f"a small cup {i}") for i in range(2)]
    for r in small:
        assert_valid_ply(r)
    big_count = (BUDGET_MB * 1024 * 1024) // PLY_BYTES_PER_GAUSSIAN + 5000
    assert len(assert_valid_ply(generate(front, "a huge castle", num_gaussians=big_count))) == big_count

    rows = httpx.get(f"{front.url}/status").json()["generations"]
    assert [row["prompt"] for row in rows] == ["a small cup 0", "a small cup 1", "a huge castle"]
    assert [row["ply"] for row in rows] == [True, True, False]
    assert [row["ply_bytes"] for row in rows] == [len(small[0].content), len(small[1].content), 0]
    assert "not kept: larger than the whole history budget of 2 MB" in rows[2]["not_kept"]
    assert rows[0]["not_kept"] is None
    # The kept PLYs are still downloadable.
    first = httpx.get(f"{front.url}/ui/generations/{rows[0]['id']}.ply")
    assert first.status_code == 200 and int(first.headers["content-length"]) == rows[0]["ply_bytes"]
    assert httpx.get(f"{front.url}/ui/generations/{rows[2]['id']}.ply").status_code == 404


def worker_generate_calls(worker: Service) -> int:
    return len(re.findall(r"POST /generate status=", worker.log()))


@pytest.mark.parametrize("count", [100, 6999])
def test_a_count_the_gates_reject_is_refused_at_once_without_a_retry(
    stack: tuple[Service, Service], count: int
) -> None:
    worker, front = stack
    before = worker_generate_calls(worker)
    body = assert_typed(generate(front, "a tiny cup", num_gaussians=count), 503, "degenerate_output")
    assert "params.num_gaussians fixes the count, so another seed cannot help" in str(body["message"])
    assert f"{count:,} gaussians; validators need at least 7,000" in str(body["message"])
    # One generation, not two: the retry "with another seed" would make the same count again.
    assert worker_generate_calls(worker) == before + 1
    assert 'splatgen_retries_total{reason="degenerate"}' not in httpx.get(f"{front.url}/metrics").text


def test_the_gate_boundary_itself_is_served(stack: tuple[Service, Service]) -> None:
    _, front = stack
    assert len(assert_valid_ply(generate(front, "a tiny cup", num_gaussians=7000))) == 7000
