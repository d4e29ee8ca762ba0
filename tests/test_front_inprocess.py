"""The front end in process: create_app(settings) + httpx.ASGITransport, its workers in-process apps.

The worker is the real worker app (procedural backend) where the generation is the point, and a small
contract-speaking test double where a worker's answer must be one a real worker does not give on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from inprocess import SMALL_SPLAT, front_with_workers, real_worker

from diagnostics import Splat
from generation.contract import GenerateJSON, WorkerHealth, WorkerMemory
from generation.front.pipeline import RETRY_SEED_STEP
from generation.settings import GB


def contract_double(
    *,
    memory: Callable[[], dict[str, Any]] | None = None,
    generate: Callable[[GenerateJSON], Response] | None = None,
    backend: dict[str, Any] | None = None,
) -> tuple[FastAPI, dict[str, int]]:
    """A test double of a worker (not a backend): the contract's routes, answers chosen by the test."""
    app = FastAPI()
    calls: dict[str, int] = {"cleanup": 0, "recycle": 0, "generate": 0}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        body = WorkerHealth(status="ok", backend=backend or {"name": "double"}, busy=False, generations=0)
        return body.model_dump(mode="json")

    @app.get("/memory")
    async def memory_route() -> dict[str, Any]:
        return memory() if memory else WorkerMemory(pid=1, rss_bytes=1_000_000).model_dump(mode="json")

    @app.post("/cleanup")
    async def cleanup() -> dict[str, Any]:
        calls["cleanup"] += 1
        return {"rss_before_bytes": 2, "rss_after_bytes": 1, "freed_bytes": 1, "seconds": 0.0, "gpu": None}

    @app.post("/recycle")
    async def recycle() -> JSONResponse:
        calls["recycle"] += 1
        return JSONResponse({"status": "recycling", "pid": 1}, status_code=202)

    @app.post("/generate")
    async def generate_route(body: GenerateJSON) -> Response:
        calls["generate"] += 1
        assert generate is not None
        return generate(body)

    return app, calls


def test_a_text_prompt_is_served_as_a_checked_splat_through_the_real_worker() -> None:
    async def scenario() -> tuple[int, dict[str, str], bytes, dict[str, Any]]:
        async with front_with_workers({"worker-a": real_worker()}) as (_, client):
            response = await client.post("/generate/", data={"prompt": "a red ceramic teapot"})
            status = (await client.get("/status")).json()
            return response.status_code, dict(response.headers), response.content, status

    code, headers, body, status = asyncio.run(scenario())
    assert code == 200
    splat = Splat.from_ply_bytes(body)
    assert len(splat) == SMALL_SPLAT == int(headers["x-gaussian-count"])
    assert headers["x-worker"] == "http://worker-a"
    [worker] = status["workers"]
    assert worker["backend"] == "procedural"
    assert worker["generations"] == 1
    assert status["outcomes"] == {"ok": 1}
    assert status["generations"][0]["kind"] == "text"


def test_status_names_a_backend_that_describes_itself_under_another_key() -> None:
    # TRELLIS's describe() says {"backend": "trellis", ...}; /status once showed None for it.
    double, _ = contract_double(backend={"name": "trellis", "backend": "trellis", "ready": True})

    async def scenario() -> dict[str, Any]:
        async with front_with_workers({"worker-a": double}) as (_, client):
            return (await client.get("/status")).json()

    assert asyncio.run(scenario())["workers"][0]["backend"] == "trellis"


def test_a_worker_that_breaks_the_memory_contract_is_not_used() -> None:
    # A renamed field is refused by the contract's model, never read as None.
    double, calls = contract_double(memory=lambda: {"pid": 1, "rss": 5})

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        async with front_with_workers({"worker-a": double}) as (_, client):
            response = await client.post("/generate/", data={"prompt": "a chair"})
            return response.status_code, response.json(), (await client.get("/status")).json()

    code, body, status = asyncio.run(scenario())
    assert (code, body["error"]) == (503, "worker_unavailable")
    assert "rss_bytes" in status["workers"][0]["last_error"]
    assert calls["generate"] == 0


def test_memory_over_the_refuse_threshold_is_cleaned_then_refused_and_the_worker_recycled() -> None:
    double, calls = contract_double(
        memory=lambda: WorkerMemory(pid=1, rss_bytes=int(3 * GB)).model_dump(mode="json")
    )

    async def scenario() -> tuple[Any, dict[str, Any]]:
        async with front_with_workers({"worker-a": double}, memory_cleanup_gb=1.0, memory_refuse_gb=2.0) as (
            _,
            client,
        ):
            response = await client.post("/generate/", data={"prompt": "a chair"})
            return response, (await client.get("/status")).json()

    response, status = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.json()["error"] == "memory_pressure"
    assert response.headers["retry-after"] == "30"
    assert (calls["cleanup"], calls["recycle"], calls["generate"]) == (1, 1, 0)
    assert status["workers"][0]["status"] == "recycling"
    assert status["workers"][0]["healthy"] is False


def degenerate_double(make_splat: Callable[..., Splat]) -> tuple[FastAPI, dict[str, int], list[int]]:
    """A worker double whose every splat has 100 gaussians: valid PLY, under the validators' 7000."""
    seeds: list[int] = []

    def few_gaussians(body: GenerateJSON) -> Response:
        seeds.append(body.seed)
        return Response(make_splat(100, body.seed).to_ply_bytes(), media_type="application/octet-stream")

    double, calls = contract_double(generate=few_gaussians)
    return double, calls, seeds


@pytest.mark.parametrize(
    ("params", "expected_seeds"),
    [({}, [5, 5 + RETRY_SEED_STEP]), ({"num_gaussians": 100}, [5])],
    ids=["retried-once", "count-fixed-no-retry"],
)
def test_a_degenerate_splat_is_retried_once_with_another_seed_then_refused(
    params: dict[str, Any], expected_seeds: list[int], make_splat: Callable[..., Splat]
) -> None:
    double, calls, seeds = degenerate_double(make_splat)

    async def scenario() -> Any:
        async with front_with_workers({"worker-a": double}) as (_, client):
            return await client.post("/v1/generate", json={"prompt": "a chair", "seed": 5, "params": params})

    response = asyncio.run(scenario())
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "degenerate_output"
    assert "too_few_gaussians" in {reason["code"] for reason in body["reasons"]}
    assert seeds == expected_seeds
    # Between the two attempts the worker is asked to clean up.
    assert calls["cleanup"] == len(expected_seeds) - 1


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"prompt": "a chair", "image_b64": "aGVsbG8="}, "invalid_prompt"),
        ({}, "invalid_prompt"),
        ({"prompt": "   "}, "empty_prompt"),
        ({"prompt": "a chair", "params": {"num_gaussians": 0}}, "invalid_request"),
    ],
)
def test_bad_json_bodies_are_refused_before_any_worker_is_called(payload: dict[str, Any], code: str) -> None:
    double, calls = contract_double()

    async def scenario() -> Any:
        async with front_with_workers({"worker-a": double}) as (_, client):
            return await client.post("/v1/generate", json=payload)

    response = asyncio.run(scenario())
    assert (response.status_code, response.json()["error"]) == (422, code)
    assert calls["generate"] == 0
