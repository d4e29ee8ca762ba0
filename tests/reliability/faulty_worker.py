"""FAULT-INJECTION TEST DOUBLE: a stand-in worker that speaks the worker's HTTP protocol and misbehaves.

It is not a backend and never serves users. It answers ``/health``, ``/memory``, ``/cleanup``, ``/recycle``,
``/metrics`` and ``/generate`` like ``splatgen worker`` does, and on ``/generate`` it does what the current
fault mode says. The mode comes from ``SPLATGEN_FAULT_MODE`` at start-up and can be switched while it runs
with ``POST /fault {"mode": ...}`` (so a test can make the worker recover). Every ``/generate`` call is
counted per mode (``GET /fault``), so a test knows how many faults it really injected.

Modes:
    ok           a valid splat (procedural backend, ``SPLATGEN_PROCEDURAL_GAUSSIANS``)
    garbage      200 with random bytes
    truncated    200 with a valid PLY cut in the middle of its body
    nan_some     200 with NaN in the positions of 5% of the gaussians
    nan_all      200 with every position NaN
    few          200 with a valid PLY of 5000 gaussians (under the validators' 7000)
    hang         never answers /generate (waits until the caller disconnects)
    server_error 500 with a JSON error body
    cut_off      declares the full Content-Length, sends half the body, then drops the connection

Run: ``python tests/reliability/faulty_worker.py --port N`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from diagnostics import Splat
from generation.contract import GenerateJSON
from generation.memory import rss_bytes
from generation.settings import WorkerSettings
from generation.worker.backends.base import GenerationParams, GenerationRequest
from generation.worker.backends.procedural import ProceduralBackend

MODES = ("ok", "garbage", "truncated", "nan_some", "nan_all", "few", "hang", "server_error", "cut_off")
FEW_GAUSSIANS = 5000
NAN_FRACTION = 0.05


class FaultState:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls: Counter[str] = Counter()
        self.backend = ProceduralBackend(WorkerSettings())

    def splat(self, body: GenerateJSON, count: int | None = None) -> Splat:
        params = GenerationParams(num_gaussians=count) if count else body.params
        request = GenerationRequest(prompt=body.prompt or "a faulty cube", seed=body.seed, params=params)
        return self.backend.generate(request)


def _with_nan(splat: Splat, fraction: float, seed: int) -> bytes:
    data = splat.data.copy()
    rows = np.random.default_rng(seed).random(len(data)) < fraction if fraction < 1 else slice(None)
    for axis in ("x", "y", "z"):
        data[axis][rows] = np.nan
    return Splat(data).to_ply_bytes()


class CutOffResponse(Response):
    """Declares the whole body's Content-Length, sends half, then ends the connection (a crash mid-send)."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body, media_type="application/octet-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
        # Raising after a partial body makes uvicorn drop the connection instead of finishing the response.
        raise ConnectionAbortedError("fault injection: connection dropped mid-body")


def create_app(mode: str) -> FastAPI:
    app = FastAPI(title="fault-injection test double (not a backend)")
    state = FaultState(mode)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "backend": {"name": "faulty-test-double", "mode": state.mode}, "busy": False}

    @app.get("/memory")
    async def memory() -> dict[str, Any]:
        return {"pid": os.getpid(), "rss_bytes": rss_bytes(), "gpu": None, "busy": False}

    @app.post("/cleanup")
    async def cleanup() -> dict[str, Any]:
        rss = rss_bytes()
        return {
            "rss_before_bytes": rss,
            "rss_after_bytes": rss,
            "freed_bytes": 0,
            "seconds": 0.0,
            "gpu": None,
        }

    @app.post("/recycle")
    async def recycle() -> JSONResponse:
        return JSONResponse({"status": "recycling", "pid": os.getpid()}, status_code=202)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response("", media_type="text/plain")

    @app.get("/fault")
    async def get_fault() -> dict[str, Any]:
        return {"mode": state.mode, "calls": dict(state.calls)}

    @app.post("/fault")
    async def set_fault(request: Request) -> dict[str, Any]:
        mode = (await request.json())["mode"]
        if mode not in MODES:
            return JSONResponse({"error": "unknown_mode", "message": f"modes: {', '.join(MODES)}"}, 422)
        state.mode = mode
        return {"mode": state.mode}

    @app.post("/generate")
    async def generate(body: GenerateJSON, request: Request) -> Any:
        mode = state.mode
        state.calls[mode] += 1
        if mode == "hang":
            # Never answers; stops waiting once the caller gave up, so the process can still shut down.
            while not await request.is_disconnected():
                await asyncio.sleep(0.1)
            return Response(status_code=499)
        if mode == "server_error":
            return JSONResponse({"error": "generation_failed", "message": "injected failure"}, 500)
        if mode == "garbage":
            return Response(os.urandom(4096), media_type="application/octet-stream")
        if mode == "few":
            return Response(
                state.splat(body, FEW_GAUSSIANS).to_ply_bytes(), media_type="application/octet-stream"
            )
        splat = state.splat(body)
        if mode in ("nan_some", "nan_all"):
            fraction = NAN_FRACTION if mode == "nan_some" else 1.0
            return Response(_with_nan(splat, fraction, body.seed), media_type="application/octet-stream")
        ply = splat.to_ply_bytes()
        if mode == "truncated":
            return Response(ply[: len(ply) * 2 // 3], media_type="application/octet-stream")
        if mode == "cut_off":
            return CutOffResponse(ply)
        return Response(
            ply, media_type="application/octet-stream", headers={"X-Gaussian-Count": str(len(splat))}
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Fault-injection test double for the splatgen worker.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    mode = os.environ.get("SPLATGEN_FAULT_MODE", "ok")
    if mode not in MODES:
        parser.error(f"SPLATGEN_FAULT_MODE must be one of {', '.join(MODES)}")
    uvicorn.run(create_app(mode), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
