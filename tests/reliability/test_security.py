"""Security: the bearer-token guard, the request size limit, and loopback-only binding.

- With a token set, every endpoint of both services answers 401 without it or with a wrong one, except
  ``/health``; the routes come from each app's own OpenAPI schema plus the docs pages, so a new route is
  covered the day it is added.
- A body over the limit is refused with 413 before it has been sent: a huge Content-Length with a tiny
  body, and a chunked upload that the server cuts off mid-stream (checked on raw sockets).
- Started with default settings, neither process listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "20000"}
FRONT_TOKEN = "front-secret-token"
WORKER_TOKEN = "worker-secret-token"
LIMIT_MB = 1
LIMIT = LIMIT_MB * 1024 * 1024
# The body limit may not cut off a legal image: a 1 MB body limit needs images of at most 1/3 MB.
IMAGE_MB = 0.25
# Paths FastAPI serves outside the schema.
DOC_PATHS = ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect")
GENERATE_PATHS = ("/generate/", "/generate", "/v1/generate")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("guarded")
    limits = {"SPLATGEN_MAX_REQUEST_MB": str(LIMIT_MB), "SPLATGEN_MAX_IMAGE_MB": str(IMAGE_MB)}
    worker_env = {**SMALL, "SPLATGEN_API_TOKEN": WORKER_TOKEN, **limits}
    with running("worker", tmp, worker_env) as worker:
        front_env = {
            "SPLATGEN_WORKERS": worker.url,
            "SPLATGEN_WORKER_TOKEN": WORKER_TOKEN,
            "SPLATGEN_API_TOKEN": FRONT_TOKEN,
            **limits,
        }
        with running("front", tmp, front_env) as front:
            yield worker, front


def routes(service: Service, token: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{service.url}/openapi.json", headers=bearer(token)).json()
    found = [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]
    return found + [("GET", p) for p in DOC_PATHS] + [("GET", "/no-such-page")]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("which", ["worker", "front"])
def test_every_endpoint_but_health_needs_the_token(guarded: tuple[Service, Service], which: str) -> None:
    service = guarded[0] if which == "worker" else guarded[1]
    token = WORKER_TOKEN if which == "worker" else FRONT_TOKEN
    checked = 0
    for method, path in routes(service, token):
        for headers in ({}, bearer("wrong"), {"Authorization": token}, {"Authorization": f"Basic {token}"}):
            r = httpx.request(method, f"{service.url}{path}", headers=headers, timeout=10)
            if path == "/health":
                assert r.status_code == 200, (method, path, r.status_code)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 4 * 8


def test_the_right_token_opens_everything(guarded: tuple[Service, Service]) -> None:
    worker, front = guarded
    for service, token in ((worker, WORKER_TOKEN), (front, FRONT_TOKEN)):
        for path in ("/openapi.json", "/metrics", "/docs"):
            assert httpx.get(f"{service.url}{path}", headers=bearer(token)).status_code == 200, path
    assert httpx.get(f"{front.url}/status", headers=bearer(FRONT_TOKEN)).status_code == 200
    assert httpx.get(f"{worker.url}/memory", headers=bearer(WORKER_TOKEN)).status_code == 200
    # The front end passes its worker token on: a guarded worker still generates through it.
    r = httpx.post(
        f"{front.url}/v1/generate", json={"prompt": "a cup"}, headers=bearer(FRONT_TOKEN), timeout=60
    )
    assert r.status_code == 200, r.text


def _read_response(sock: socket.socket, timeout_s: float = 10) -> tuple[int, dict[str, object]]:
    """Read one HTTP response off a raw socket: (status, JSON body)."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body[:length] or b"{}")


def _request_head(service: Service, path: str, token: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {'application/json' if path != '/generate/' else 'application/x-www-form-urlencoded'}\r\n"
        f"{extra}\r\n"
    ).encode()


@pytest.mark.parametrize("path", GENERATE_PATHS)
def test_a_huge_declared_body_is_refused_before_it_is_sent(
    guarded: tuple[Service, Service], path: str
) -> None:
    _, front = guarded
    with socket.create_connection(("127.0.0.1", front.port)) as sock:
        # Declares 10 GB, sends 10 bytes, and never sends the rest: a 413 can only come from the header.
        sock.sendall(
            _request_head(front, path, FRONT_TOKEN, "Content-Length: 10000000000\r\n") + b"prompt=abc"
        )
        status, body = _read_response(sock)
    assert status == 413
    # On a generation route a body over the limit can only hold an oversized image.
    assert body["error"] == "image_too_large"
    assert "10000000000" not in body["message"] and "9536.7 MB" in body["message"]


@pytest.mark.parametrize("which", ["worker", "front"])
def test_a_chunked_upload_is_cut_off_at_the_limit(guarded: tuple[Service, Service], which: str) -> None:
    worker, front = guarded
    service, token, path = (
        (worker, WORKER_TOKEN, "/generate") if which == "worker" else (front, FRONT_TOKEN, "/v1/generate")
    )
    # Kernel buffers on loopback hold several MB in flight, so "cut off" means far below the total.
    total = 64 * LIMIT
    chunk = b'{"prompt": "' + b"a" * (64 * 1024) + b'"}'
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    answer = None
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.connect(("127.0.0.1", service.port))
        sock.sendall(_request_head(service, path, token, "Transfer-Encoding: chunked\r\n"))
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answer = _read_response(sock)
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                answer = _read_response(sock)
                break
            sent += len(chunk)
        else:
            answer = _read_response(sock)
    status, body = answer
    assert status == 413
    assert body["error"] == ("payload_too_large" if which == "worker" else "image_too_large")
    # The server stopped reading near the limit: the client was still far from done.
    assert LIMIT <= sent < total // 4, sent


def _listening(pid: int) -> list[str]:
    return [
        c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]


def test_services_bind_loopback_only_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLATGEN_HOST", raising=False)
    with (
        running("worker", tmp_path, SMALL) as worker,
        running("front", tmp_path, {"SPLATGEN_WORKERS": worker.url}) as front,
    ):
        for service in (worker, front):
            addresses = _listening(service.pid)
            assert addresses, f"{service.url} listens on nothing"
            assert set(addresses) == {"127.0.0.1"}, addresses
