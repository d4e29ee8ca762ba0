"""The worker in process: create_app(settings) + httpx.ASGITransport; every answer read back through the
contract's models, as the front end reads it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from inprocess import SMALL_SPLAT, serving, wait_ready, worker_settings

from diagnostics import Splat
from generation.contract import CleanupResult, RecycleAccepted, WorkerHealth, WorkerMemory
from generation.errors import BackendUnavailable
from generation.worker.app import create_app
from generation.worker.backends import GenerationRequest


class DescribedLikeTrellis:
    """A backend test double (TRELLIS needs CUDA): describes itself under "backend", as TRELLIS does."""

    name = "trellis"

    def __init__(self, load_error: str | None = None) -> None:
        self.load_error = load_error

    def load(self) -> None:
        if self.load_error:
            raise BackendUnavailable(self.load_error)

    def generate(self, request: GenerationRequest) -> Splat:
        raise AssertionError("not called in these tests")

    def cleanup(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "ready": True, "prompt_kinds": ["image"]}


def test_every_control_answer_is_the_contracts_model() -> None:
    app = create_app(worker_settings())

    async def scenario() -> dict[str, Any]:
        async with serving(app) as client:
            await wait_ready(app)
            return {
                "health": (await client.get("/health")),
                "memory": (await client.get("/memory")),
                "cleanup": (await client.post("/cleanup")),
            }

    answers = asyncio.run(scenario())
    health = WorkerHealth.model_validate_json(answers["health"].content)
    assert (answers["health"].status_code, health.status, health.backend.name) == (200, "ok", "procedural")
    assert health.backend.model_extra and health.backend.model_extra["gaussians"] == SMALL_SPLAT
    memory = WorkerMemory.model_validate_json(answers["memory"].content)
    assert memory.rss_bytes > 0 and memory.gpu is None
    cleanup = CleanupResult.model_validate_json(answers["cleanup"].content)
    assert cleanup.freed_bytes == cleanup.rss_before_bytes - cleanup.rss_after_bytes


def test_a_backend_named_under_another_key_is_still_named() -> None:
    app = create_app(worker_settings(), backend=DescribedLikeTrellis())  # type: ignore[arg-type]

    async def scenario() -> Any:
        async with serving(app) as client:
            await wait_ready(app)
            return await client.get("/health")

    health = WorkerHealth.model_validate_json(asyncio.run(scenario()).content)
    assert health.backend.name == "trellis"


def test_a_text_prompt_makes_a_ply_of_the_configured_size() -> None:
    app = create_app(worker_settings())

    async def scenario() -> Any:
        async with serving(app) as client:
            await wait_ready(app)
            return await client.post("/generate", json={"prompt": "a wooden chair", "seed": 3})

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert (
        len(Splat.from_ply_bytes(response.content))
        == SMALL_SPLAT
        == int(response.headers["x-gaussian-count"])
    )


def test_recycling_and_not_ready_refusals_carry_their_retry_after_settings() -> None:
    recycling_app = create_app(worker_settings(recycling_retry_after_s=3))
    broken_app: FastAPI = create_app(
        worker_settings(exit_on_load_error=False, loading_retry_after_s=4),
        backend=DescribedLikeTrellis(load_error="test: no CUDA here"),  # type: ignore[arg-type]
    )

    # What the CLI sets: the recycle ends the server gracefully (here: flags it) instead of signalling.
    server = SimpleNamespace(should_exit=False)
    recycling_app.state.worker.server = server

    async def scenario() -> tuple[Any, Any, Any, Any]:
        async with serving(recycling_app) as client:
            await wait_ready(recycling_app)
            recycle = await client.post("/recycle")
            refused = await client.post("/generate", json={"prompt": "a chair"})
            await recycling_app.state.worker.recycle_task
        async with serving(broken_app) as client:
            await wait_ready(broken_app)
            health = await client.get("/health")
            not_ready = await client.post("/generate", json={"prompt": "a chair"})
        return recycle, refused, health, not_ready

    recycle, refused, health, not_ready = asyncio.run(scenario())
    assert recycle.status_code == 202
    assert server.should_exit
    RecycleAccepted.model_validate_json(recycle.content)
    assert (refused.status_code, refused.json()["error"], refused.headers["retry-after"]) == (
        503,
        "recycling",
        "3",
    )
    parsed = WorkerHealth.model_validate_json(health.content)
    assert (health.status_code, parsed.status, parsed.error) == (503, "error", "backend_unavailable")
    assert (not_ready.status_code, not_ready.json()["error"]) == (503, "not_ready")
    assert not_ready.json()["message"] == "test: no CUDA here"
    assert not_ready.headers["retry-after"] == "4"
