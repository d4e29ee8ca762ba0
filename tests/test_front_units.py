"""Unit tests of the front end's parts, each alone: the memory guard, the worker pool, the pipeline's retry
decisions and prompt classification. A failure here names the unit that broke."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from generation.contract import CleanupResult, GenerateJSON, GenerationParams, RecycleAccepted, WorkerMemory
from generation.errors import InvalidRequest, MemoryPressure, Overloaded, QueueTimeout, WorkerUnavailable
from generation.front.memory_guard import MemoryGuard
from generation.front.pipeline import RETRY_SEED_STEP, after_gates, after_worker_failure, next_seed
from generation.front.worker_client import WorkerClient, WorkerFailed
from generation.front.worker_pool import WorkerPool
from generation.image_input import check_image
from generation.prompts import MIN_IMAGE_B64_CHARS, classify_prompt, json_prompt
from generation.settings import GB, FrontSettings


class ScriptedWorkers:
    """A test double of ``WorkerClient``: /memory answers from a list, cleanups and recycles counted."""

    def __init__(self, rss_readings: list[int], gpu: dict[str, int] | None = None) -> None:
        self.readings = list(rss_readings)
        self.gpu = gpu
        self.calls: list[str] = []

    async def memory(self, url: str) -> WorkerMemory:
        self.calls.append("memory")
        return WorkerMemory(pid=1, rss_bytes=self.readings.pop(0), gpu=self.gpu)

    async def cleanup(self, url: str) -> CleanupResult:
        self.calls.append("cleanup")
        return CleanupResult(rss_before_bytes=0, rss_after_bytes=0, freed_bytes=0, seconds=0.0)

    async def recycle(self, url: str) -> RecycleAccepted:
        self.calls.append("recycle")
        return RecycleAccepted(pid=1)


SETTINGS = FrontSettings(workers=["http://w"], memory_cleanup_gb=4, memory_refuse_gb=6, retry_after_s=17)


def guard_with(workers: ScriptedWorkers) -> tuple[MemoryGuard, WorkerPool]:
    pool = WorkerPool(["http://w"], workers, max_queue=1, retry_after_s=17)  # type: ignore[arg-type]
    pool.workers[0].healthy = True
    return MemoryGuard(SETTINGS, workers, pool), pool  # type: ignore[arg-type]


# The memory guard.


def test_memory_under_the_cleanup_threshold_is_one_read_and_nothing_else() -> None:
    workers = ScriptedWorkers([int(1 * GB)])
    guard, pool = guard_with(workers)
    check = asyncio.run(guard.check(pool.workers[0]))
    assert (check.action, workers.calls) == ("ok", ["memory"])
    assert pool.workers[0].memory is not None and pool.workers[0].memory.rss_bytes == int(1 * GB)


def test_memory_at_the_cleanup_threshold_is_cleaned_and_read_again() -> None:
    workers = ScriptedWorkers([int(4 * GB), int(2 * GB)])
    guard, pool = guard_with(workers)
    check = asyncio.run(guard.check(pool.workers[0]))
    assert (check.action, workers.calls) == ("cleaned", ["memory", "cleanup", "memory"])
    assert check.to_dict()["worker_rss_bytes"] == int(2 * GB)
    assert pool.workers[0].healthy


def test_memory_still_at_the_refuse_threshold_refuses_and_recycles_through_the_pool() -> None:
    workers = ScriptedWorkers([int(7 * GB), int(6 * GB)])
    guard, pool = guard_with(workers)
    with pytest.raises(MemoryPressure) as refused:
        asyncio.run(guard.check(pool.workers[0]))
    assert workers.calls == ["memory", "cleanup", "memory", "recycle"]
    assert refused.value.headers == {"Retry-After": "17"}
    assert refused.value.extra["memory"]["action"] == "refused"
    assert (pool.workers[0].healthy, pool.workers[0].status) == (False, "recycling")


def test_gpu_memory_over_its_fraction_triggers_the_cleanup() -> None:
    gpu = {"reserved_bytes": 90, "allocated_bytes": 10, "total_bytes": 100}
    workers = ScriptedWorkers([1, 1], gpu=gpu)
    guard, pool = guard_with(workers)
    check = asyncio.run(guard.check(pool.workers[0]))
    assert check.action == "cleaned"
    assert check.reasons == []
    assert "cleanup" in workers.calls


# The worker pool.


def pool_of(healthy: int, max_queue: int = 1) -> WorkerPool:
    pool = WorkerPool([f"http://w{i}" for i in range(healthy)], None, max_queue=max_queue, retry_after_s=9)  # type: ignore[arg-type]
    for worker in pool.workers:
        worker.healthy = True
    return pool


def test_the_pool_hands_out_the_least_used_free_worker() -> None:
    pool = pool_of(3)
    pool.workers[0].generations = 5
    pool.workers[1].generations = 1
    pool.workers[2].generations = 3

    async def take() -> str:
        async with pool.acquire(1.0) as worker:
            return worker.url

    assert asyncio.run(take()) == "http://w1"


def test_the_pool_refuses_without_a_healthy_worker() -> None:
    pool = pool_of(1)
    pool.workers[0].healthy = False

    async def take() -> None:
        async with pool.acquire(1.0):
            pass

    with pytest.raises(WorkerUnavailable) as refused:
        asyncio.run(take())
    assert refused.value.headers == {"Retry-After": "9"}


def test_a_full_queue_is_refused_and_a_waiting_request_times_out() -> None:
    pool = pool_of(1, max_queue=1)
    outcomes: list[str] = []

    async def scenario() -> None:
        async with pool.acquire(1.0):
            waiter = asyncio.create_task(pool._take(0.05, frozenset()))
            while pool.waiting == 0:
                await asyncio.sleep(0)
            try:
                await pool._take(1.0, frozenset())
            except Overloaded:
                outcomes.append("overloaded")
            try:
                await waiter
            except QueueTimeout:
                outcomes.append("timeout")

    asyncio.run(scenario())
    assert outcomes == ["overloaded", "timeout"]
    assert pool.waiting == 0
    assert not pool.workers[0].busy


def test_a_waiting_request_gets_the_worker_as_soon_as_it_is_released() -> None:
    pool = pool_of(1, max_queue=1)

    async def scenario() -> tuple[str, int]:
        async with pool.acquire(1.0) as first:
            waiter = asyncio.create_task(pool._take(30.0, frozenset()))
            while pool.waiting == 0:
                await asyncio.sleep(0)
            pool.note_generation(first)
        second = await waiter
        return second.url, second.generations

    assert asyncio.run(scenario()) == ("http://w0", 1)


def test_marking_a_worker_down_wakes_a_waiting_request_with_worker_unavailable() -> None:
    pool = pool_of(1, max_queue=1)

    async def scenario() -> None:
        async with pool.acquire(1.0) as worker:
            waiter = asyncio.create_task(pool._take(30.0, frozenset()))
            while pool.waiting == 0:
                await asyncio.sleep(0)
            await pool.mark_down(worker, "test: broke off")
            await waiter

    with pytest.raises(WorkerUnavailable):
        asyncio.run(scenario())
    assert (pool.workers[0].status, pool.workers[0].failures) == ("down", 1)


def test_a_probe_reads_health_and_memory_through_the_contract() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(
                200, json={"status": "ok", "backend": {"name": "procedural"}, "busy": False}
            )
        return httpx.Response(200, json={"pid": 7, "rss_bytes": 123, "gpu": None, "busy": False})

    async def scenario() -> WorkerPool:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            pool = WorkerPool(["http://w"], WorkerClient(SETTINGS, client), max_queue=1, retry_after_s=1)
            await pool.probe_all()
            return pool

    worker = asyncio.run(scenario()).workers[0]
    assert worker.snapshot() | {"last_seen": None} == {
        "url": "http://w", "healthy": True, "busy": False, "status": "ok", "last_error": None,
        "last_seen": None, "rss_bytes": 123, "gpu": None, "generations": 0, "failures": 0,
        "backend": "procedural",
    }  # fmt: skip


def test_a_worker_that_cuts_its_body_short_is_a_worker_failure() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"ply\n"), headers={"Content-Length": "10"})

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            prompt = classify_prompt("a chair", max_chars=100, max_image_mb=1)
            await WorkerClient(SETTINGS, client).generate("http://w", prompt, 0, GenerationParams())

    with pytest.raises(WorkerFailed, match="4 of 10 bytes"):
        asyncio.run(scenario())


# The pipeline's retry decisions.


@pytest.mark.parametrize(
    ("params", "codes", "so_far", "expected"),
    [
        (GenerationParams(), [], 0, "serve"),
        (GenerationParams(), ["too_few_gaussians"], 1, "retry"),
        (GenerationParams(), ["nan_values"], 2, "refuse"),
        (GenerationParams(num_gaussians=100), ["too_few_gaussians"], 1, "refuse_count_fixed"),
        # A fixed count with another failure beside it: another seed may still help.
        (GenerationParams(num_gaussians=100), ["too_few_gaussians", "nan_values"], 1, "retry"),
    ],
)
def test_after_the_gates(params: GenerationParams, codes: list[str], so_far: int, expected: str) -> None:
    assert after_gates(params, codes, so_far, degenerate_attempts=2) == expected


def test_more_degenerate_attempts_allow_more_retries() -> None:
    assert after_gates(GenerationParams(), ["nan_values"], 2, degenerate_attempts=3) == "retry"


@pytest.mark.parametrize(
    ("failure", "others", "expected"),
    [
        (WorkerFailed("x"), 1, "try_another"),
        (MemoryPressure("x"), 1, "try_another"),
        (WorkerFailed("x"), 0, "worker_unavailable"),
        (MemoryPressure("x"), 0, "raise"),
    ],
)
def test_after_a_worker_failure(failure: Exception, others: int, expected: str) -> None:
    assert after_worker_failure(failure, others) == expected


def test_retried_seeds_step_by_a_prime_and_wrap_at_32_bits() -> None:
    assert next_seed(5) == 5 + RETRY_SEED_STEP
    assert next_seed(2**32 - 1) == RETRY_SEED_STEP - 1


# Prompt classification.


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("text", ["a cat", "hello", "Zm9vYmFy", "a" * (MIN_IMAGE_B64_CHARS - 1)])
def test_short_or_spaced_prompts_are_text(text: str) -> None:
    assert classify_prompt(text, max_chars=1024, max_image_mb=1).text == text


def test_a_base64_png_prompt_is_an_image_and_kept_as_png() -> None:
    parsed = classify_prompt(png_b64(), max_chars=1024, max_image_mb=1)
    assert (parsed.kind, parsed.image_format) == ("image", "PNG")
    assert parsed.image is not None and parsed.image.startswith(b"\x89PNG")


def test_base64_that_is_not_an_image_is_refused_never_served_as_text() -> None:
    not_an_image = base64.b64encode(b"x" * 120).decode()
    with pytest.raises(InvalidRequest) as refused:
        classify_prompt(not_an_image, max_chars=1024, max_image_mb=1)
    assert refused.value.code == "invalid_image"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": "a", "image_b64": "aGk="}, "invalid_prompt"),
        ({}, "invalid_prompt"),
        ({"prompt": ""}, "empty_prompt"),
    ],
)
def test_a_json_body_needs_exactly_one_prompt(body: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        json_prompt(GenerateJSON(**body), max_chars=1024, max_image_mb=1)
    assert refused.value.code == code


# The worker's image check: the front end decoded the image already, the worker reads its header.


def png(mode: str, colour: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (16, 16), 3).save(buffer, format="GIF")
    return buffer.getvalue()


def test_the_worker_passes_a_plain_image_on_as_the_very_bytes_it_got() -> None:
    data = png("RGB", (10, 200, 30))
    checked = check_image(data, 1 << 20)
    assert checked.data is data
    assert (checked.format, checked.mode, checked.size, checked.converted) == ("PNG", "RGB", (16, 16), False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png("RGB", (1, 2, 3))[:60], "cannot be decoded"),
        (gif(), "is GIF"),
        (png("RGBA", (200, 40, 40, 180)), "no pixel is opaque enough"),
    ],
    ids=["truncated", "gif", "transparent"],
)
def test_the_worker_still_refuses_what_it_cannot_use(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as refused:
        check_image(data, 1 << 20)
    assert refused.value.code == "invalid_image"


def test_a_sixteen_bit_image_sent_to_the_worker_directly_is_converted() -> None:
    buffer = io.BytesIO()
    Image.new("I;16", (16, 16), 30000).save(buffer, format="PNG")
    checked = check_image(buffer.getvalue(), 1 << 20)
    assert checked.converted
    assert Image.open(io.BytesIO(checked.data)).mode == "RGB"
