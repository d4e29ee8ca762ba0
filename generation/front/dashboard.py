"""The live dashboard, ``GET /ui`` on the front end: recent generations, workers, memory over time, outcomes.

One static page (generation/front/static/) polls ``/ui/api/summary`` and ``/ui/api/memory`` every 2 s and opens a
generation's PLY in a WebGL splat viewer vendored from npm (scripts/vendor_viewer.sh): nothing is loaded from
outside. Like every path but /health it sits behind SPLATGEN_API_TOKEN when that is set; browsers send no
bearer header, so use it over loopback or an SSH tunnel (``ssh -L 8093:127.0.0.1:8093 host``) with no token.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from generation.errors import NotKept
from generation.front.memory_series import MemorySeries
from generation.front.status_view import status_view

if TYPE_CHECKING:
    from generation.front.pipeline import FrontState

STATIC_DIR = Path(__file__).resolve().parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}
_CHUNK_BYTES = 1024 * 1024
# The table's rows leave out the full statistics; /ui/api/generations/{id} has them.
_ROW_OMITS = frozenset({"stats"})


def install_dashboard(app: FastAPI) -> None:
    """Add /ui, its JSON API, the generation files and the static assets to the front end."""
    app.include_router(_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")


def start_memory_sampler(app: FastAPI) -> asyncio.Task[None]:
    """Start sampling memory for the chart (call in the lifespan, after ``app.state.front`` is set)."""
    state: FrontState = app.state.front
    series = MemorySeries(
        state.pool.workers,
        capacity=state.settings.memory_samples,
        interval_s=state.settings.memory_sample_interval_s,
    )
    app.state.memory_series = series
    return asyncio.create_task(series.run(), name="memory-sampler")


_router = APIRouter(prefix="/ui", include_in_schema=False)


def _state(request: Request) -> FrontState:
    return request.app.state.front


@functools.cache
def content_security_policy() -> str:
    """The page may load, connect to and run only what the front end itself serves."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    match = re.search(r'<script type="importmap">(.*?)</script>', html, re.DOTALL)
    import_map = match.group(1) if match else ""
    digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    return "; ".join(
        [
            "default-src 'self'",
            # The import map is the one inline script; Spark runs WebAssembly in a worker made from a blob.
            f"script-src 'self' 'sha256-{digest}' 'wasm-unsafe-eval' blob:",
            "worker-src 'self' blob: data:",
            "connect-src 'self' blob: data:",
            "img-src 'self' blob: data:",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@_router.get("")
@_router.get("/")
async def page() -> FileResponse:
    headers = {**_NO_STORE, "Content-Security-Policy": content_security_policy()}
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)


@_router.get("/api/summary")
def summary(request: Request, limit: int = Query(default=0, ge=0)) -> Response:
    state = _state(request)
    view = status_view(state, limit or None)
    # The table shows the newest first, without the full statistics.
    rows = [
        {k: v for k, v in record.items() if k not in _ROW_OMITS} for record in reversed(view["generations"])
    ]
    thresholds = {
        **view["thresholds"],
        "memory_cleanup_bytes": state.guard.cleanup_bytes,
        "memory_refuse_bytes": state.guard.refuse_bytes,
    }
    return _json({**view, "thresholds": thresholds, "history": state.history.usage(), "generations": rows})


@_router.get("/api/memory")
def memory(request: Request) -> Response:
    series: MemorySeries | None = getattr(request.app.state, "memory_series", None)
    body: dict[str, Any] = (
        series.to_dict() if series else {"interval_s": None, "capacity": 0, "times": [], "processes": []}
    )
    return _json(body)


@_router.get("/api/generations/{gen_id:int}")
def generation(request: Request, gen_id: int) -> Response:
    record = _state(request).history.record(gen_id)
    if record is None:
        raise NotKept(f"generation {gen_id} is not in the history")
    return _json(record)


@_router.get("/generations/{gen_id:int}.ply")
def generation_ply(request: Request, gen_id: int) -> Response:
    source = _state(request).history.open_ply(gen_id)
    if source is None:
        raise NotKept(f"the PLY of generation {gen_id} is not kept (evicted or never stored)")
    headers = {"Content-Disposition": f'inline; filename="generation-{gen_id}.ply"', **_NO_STORE}
    if isinstance(source, bytes | memoryview):
        return Response(source, media_type="application/octet-stream", headers=headers)
    # Streamed from the open file: a 200 MB PLY never sits whole in the front end's memory.
    headers["Content-Length"] = str(os.fstat(source.fileno()).st_size)
    return StreamingResponse(_chunks(source), media_type="application/octet-stream", headers=headers)


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_CHUNK_BYTES):
            yield chunk


@_router.get("/generations/{gen_id:int}/preview.png")
def generation_preview(request: Request, gen_id: int) -> Response:
    return _png(_state(request).history.preview(gen_id), f"no preview for generation {gen_id}")


@_router.get("/generations/{gen_id:int}/thumbnail.png")
def generation_thumbnail(request: Request, gen_id: int) -> Response:
    return _png(_state(request).history.thumbnail(gen_id), f"no prompt thumbnail for generation {gen_id}")


def _png(data: bytes | None, missing: str) -> Response:
    if data is None:
        raise NotKept(missing)
    # Ids start again at 1 after a restart without history_dir: never let a browser reuse an old picture.
    return Response(data, media_type="image/png", headers=_NO_STORE)


def _json(body: dict[str, Any]) -> Response:
    return JSONResponse(body, headers=_NO_STORE)
