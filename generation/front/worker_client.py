"""The front end's only way to talk to a worker: its HTTP contract (``generation.contract``), typed.

Every answer is parsed into the contract's models here, so the pool, the memory guard and the pipeline never
read a worker's JSON themselves. A worker that breaks off, hangs or answers with a server error raises
``WorkerFailed`` (try another worker); a worker that refuses the request itself raises its ``ServiceError``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from generation.contract import (
    CleanupResult,
    GenerateJSON,
    GenerationParams,
    RecycleAccepted,
    WorkerHealth,
    WorkerMemory,
)
from generation.errors import ServiceError
from generation.prompts import ParsedPrompt
from generation.settings import FrontSettings

Answer = TypeVar("Answer", WorkerHealth, WorkerMemory, CleanupResult, RecycleAccepted)


class WorkerFailed(Exception):
    """The worker broke off, hung, or answered with a server error: try another worker."""


class WorkerClient:
    """health, memory, cleanup, recycle and generate against any worker URL, over one shared client."""

    def __init__(self, settings: FrontSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        token = settings.worker_token.get_secret_value() if settings.worker_token else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def health(self, url: str) -> tuple[bool, WorkerHealth]:
        """Whether the worker is ready (200), and what it says of itself either way."""
        response = await self._call("GET", url, "/health", self.settings.worker_control_timeout_s)
        return response.status_code == 200, _parse(WorkerHealth, response)

    async def memory(self, url: str) -> WorkerMemory:
        response = await self._call("GET", url, "/memory", self.settings.worker_control_timeout_s)
        response.raise_for_status()
        return _parse(WorkerMemory, response)

    async def cleanup(self, url: str) -> CleanupResult:
        response = await self._call("POST", url, "/cleanup", self.settings.worker_cleanup_timeout_s)
        response.raise_for_status()
        return _parse(CleanupResult, response)

    async def recycle(self, url: str) -> RecycleAccepted:
        response = await self._call("POST", url, "/recycle", self.settings.worker_control_timeout_s)
        response.raise_for_status()
        return _parse(RecycleAccepted, response)

    async def generate(
        self, url: str, prompt: ParsedPrompt, seed: int, params: GenerationParams
    ) -> tuple[memoryview, float]:
        """The PLY bytes (one buffer, read once) and the worker's own seconds."""
        body = GenerateJSON(
            prompt=prompt.text, image_b64=prompt.image_b64() if prompt.text is None else None,
            seed=seed, params=params,
        )  # fmt: skip
        request = self.client.build_request(
            "POST",
            f"{url}/generate",
            content=body.model_dump_json(exclude_none=True),
            headers={**self.headers, "Content-Type": "application/json"},
            timeout=self.settings.worker_timeout_s,
        )
        try:
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code == 200:
                    return await _read_body_once(response), _seconds_header(response)
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise WorkerFailed(f"no answer within {self.settings.worker_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise WorkerFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        answer = _json_or_none(response)
        if 400 <= response.status_code < 500 and answer and "error" in answer:
            # The request itself is wrong (e.g. a prompt kind with no pipeline): no other worker will differ.
            raise ServiceError(
                str(answer.get("message", "")), code=str(answer["error"]), status=response.status_code
            )
        detail = answer.get("message") if answer else response.text[:200]
        raise WorkerFailed(f"worker answered {response.status_code}: {detail}")

    async def _call(self, method: str, url: str, path: str, timeout_s: float) -> httpx.Response:
        return await self.client.request(method, f"{url}{path}", headers=self.headers, timeout=timeout_s)


def _parse(model: type[Answer], response: httpx.Response) -> Answer:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        # A worker of another version, or something else on that port: say which field broke the contract.
        raise ValueError(f"{response.request.url} broke the worker contract: {exc}") from None


async def _read_body_once(response: httpx.Response) -> memoryview:
    """Read a PLY body straight into one buffer of its declared size.

    ``response.content`` keeps every chunk and then joins them: two copies of a large PLY at the peak.
    """
    try:
        size = int(response.headers["content-length"])
    except (KeyError, ValueError):
        raise WorkerFailed("the worker answered without a valid Content-Length") from None
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for chunk in response.aiter_raw():
        end = filled + len(chunk)
        if end > size:
            raise WorkerFailed(f"the worker sent more than its Content-Length of {size} bytes")
        view[filled:end] = chunk
        filled = end
    if filled != size:
        raise WorkerFailed(f"the worker sent {filled} of {size} bytes")
    return view


def _seconds_header(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("x-generation-seconds", "nan"))
    except ValueError:
        return float("nan")


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
