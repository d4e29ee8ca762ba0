"""One miner-style request through the front end, timed, and its output measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from diagnostics import PlyFormatError, Splat
from diagnostics.gates import check_splat
from diagnostics.stats import splat_stats
from smoke.prompts import SmokePrompt


@dataclass
class Generation:
    index: int
    kind: str
    prompt: str
    started_s: float = 0.0
    ended_s: float = 0.0
    seconds: float | None = None
    status: int | None = None
    ok: bool = False
    error: str | None = None
    error_message: str | None = None
    bytes: int = 0
    gaussians: int | None = None
    header_gaussians: int | None = None
    server_seconds: float | None = None
    worker: str | None = None
    attempts: int | None = None
    opacity_mean: float | None = None
    opacity_std: float | None = None
    opacity_pos_inf: int | None = None
    opacity_neg_inf: int | None = None
    transparent_fraction: float | None = None
    fixed: bool | None = None
    std_before_fix: float | None = None
    std_after_fix: float | None = None
    gates_passed: bool | None = None
    gate_failures: list[dict[str, str]] = field(default_factory=list)
    preview: str | None = None


def _header_number(headers: httpx.Headers, name: str, kind: type) -> Any:
    try:
        return kind(headers[name]) if name in headers else None
    except ValueError:
        return None


def analyse_ply(record: Generation, ply: bytes) -> Splat | None:
    """Fill the record's statistics and gates from the served bytes; None when they are not a PLY."""
    try:
        splat = Splat.from_ply_bytes(ply)
    except PlyFormatError as exc:
        record.ok = False
        record.error, record.error_message = "malformed_ply", str(exc)
        return None
    stats = splat_stats(splat)
    record.gaussians = stats.count
    record.opacity_mean, record.opacity_std = stats.opacity.mean, stats.opacity.std
    record.opacity_pos_inf, record.opacity_neg_inf = stats.opacity.pos_inf, stats.opacity.neg_inf
    record.transparent_fraction = stats.opacity.transparent_fraction
    failures = check_splat(splat, stats=stats)
    record.gates_passed = not failures
    record.gate_failures = [f.to_dict() for f in failures]
    if record.header_gaussians is not None and record.header_gaussians != stats.count:
        record.ok = False
        record.error = "count_mismatch"
        record.error_message = f"X-Gaussian-Count says {record.header_gaussians}, the PLY holds {stats.count}"
    return splat


def fix_details(client: httpx.Client, url: str, record: Generation) -> None:
    """The front end's own before/after opacity std for this generation (from GET /status)."""
    try:
        history = client.get(f"{url}/status", timeout=10).json().get("generations") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return
    mine = [g for g in history if g.get("outcome", "ok") == "ok" and g.get("gaussians") == record.gaussians]
    if mine:
        record.std_before_fix = mine[-1].get("opacity_std_before")
        record.std_after_fix = mine[-1].get("opacity_std_after")


def run_generation(
    client: httpx.Client,
    url: str,
    prompt: SmokePrompt,
    index: int,
    clock: Callable[[], float],
    timeout: float,
) -> tuple[Generation, Splat | None]:
    """One miner-style request, timed from send to last byte, then analysed."""
    record = Generation(index=index, kind=prompt.kind, prompt=prompt.label)
    record.started_s = clock()
    started = time.perf_counter()
    try:
        response = client.post(f"{url}/generate/", data={"prompt": prompt.value}, timeout=timeout)
    except httpx.HTTPError as exc:
        record.seconds = time.perf_counter() - started
        record.ended_s = clock()
        record.error, record.error_message = "transport_error", f"{type(exc).__name__}: {exc}"
        return record, None
    record.seconds = time.perf_counter() - started
    record.ended_s = clock()
    record.status = response.status_code
    record.bytes = len(response.content)
    if response.status_code != 200:
        try:
            body = response.json()
            record.error, record.error_message = str(body.get("error")), str(body.get("message"))
        except (ValueError, AttributeError):
            record.error, record.error_message = "untyped_error", response.text[:300]
        return record, None
    headers = response.headers
    record.ok = True
    record.header_gaussians = _header_number(headers, "x-gaussian-count", int)
    record.server_seconds = _header_number(headers, "x-generation-seconds", float)
    record.attempts = _header_number(headers, "x-attempts", int)
    record.worker = headers.get("x-worker")
    record.fixed = headers.get("x-opacity-fixed", "").lower() == "true"
    splat = analyse_ply(record, response.content)
    if record.fixed:
        fix_details(client, url, record)
    return record, splat
