"""``splatgen generate``: ask a running front end for a splat and save it atomically."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from diagnostics import PlyFormatError, Splat
from diagnostics.atomic import write_bytes_atomic


class ClientError(Exception):
    """A refusal or failure, already phrased for the operator."""


@dataclass(frozen=True)
class Generated:
    path: Path
    gaussians: int
    seconds: float
    fixed: bool
    worker: str | None


def request_splat(
    url: str,
    *,
    prompt: str | None,
    image: Path | None,
    seed: int,
    params: dict[str, Any],
    token: str | None,
    timeout_s: float,
) -> tuple[bytes, httpx.Headers, float]:
    payload: dict[str, Any] = {"seed": seed, "params": params}
    if image is not None:
        try:
            payload["image_b64"] = base64.b64encode(image.read_bytes()).decode("ascii")
        except OSError as exc:
            raise ClientError(f"cannot read image {image}: {exc.strerror}") from None
    else:
        payload["prompt"] = prompt
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/generate", json=payload, headers=headers, timeout=timeout_s
        )
    except httpx.ConnectError:
        raise ClientError(
            f"no splatgen front end answers at {url} (is it running? scripts/start_service.sh)"
        ) from None
    except httpx.TimeoutException:
        raise ClientError(f"no answer from {url} within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise ClientError(f"request to {url} failed: {exc}") from None
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        try:
            body = response.json()
            detail = f"{body.get('error')}: {body.get('message')}"
        except ValueError:
            detail = response.text[:200]
        retry = response.headers.get("retry-after")
        hint = f" (retry after {retry} s)" if retry else ""
        raise ClientError(f"HTTP {response.status_code} {detail}{hint}")
    return response.content, response.headers, seconds


def generate_to_file(url: str, output: Path, **kwargs: Any) -> Generated:
    """Request a splat, check it parses, then write it with temp file + rename."""
    data, headers, seconds = request_splat(url, **kwargs)
    try:
        count = len(Splat.from_ply_bytes(data))
    except PlyFormatError as exc:
        raise ClientError(f"the service answered bytes that are not a valid PLY: {exc}") from None
    write_bytes_atomic(output, data)
    return Generated(
        output, count, seconds, headers.get("x-opacity-fixed") == "true", headers.get("x-worker")
    )
