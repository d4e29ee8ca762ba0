"""Every outcome is visible: one access-log line per request (refusals included), counted in
splatgen_requests_total{route,status,code}, in /status and the dashboard; information on stdout,
warnings and errors on stderr.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_front import assert_typed, assert_valid_ply, front_env

from generation.testing import REPO, SPLATGEN, Service, free_port, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "12000"}
TOKEN = "access-log-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("access")
    env = front_env(SPLATGEN_API_TOKEN=TOKEN, SPLATGEN_MAX_IMAGE_MB="1")
    with running("worker", tmp, SMALL) as worker:
        env["SPLATGEN_WORKERS"] = worker.url
        with running("front", tmp, env) as front:
            yield worker, front


def access_lines(service: Service, route: str) -> list[str]:
    return [line for line in service.log().splitlines() if f"splatgen.access: POST {route} " in line]


def test_every_outcome_gets_a_line_a_count_and_a_place_in_status(stack: tuple[Service, Service]) -> None:
    worker, front = stack
    url = f"{front.url}/generate/"
    assert_valid_ply(httpx.post(url, data={"prompt": "a blue teapot"}, headers=AUTH, timeout=60))
    assert_typed(httpx.post(url, data={"prompt": ""}, headers=AUTH, timeout=60), 422, "empty_prompt")
    assert_typed(httpx.post(url, data={"prompt": "a cat"}, timeout=60), 401, "unauthorized")
    big = "A" * (4 * 1024 * 1024)  # over the 2 MB body limit a 1 MB image limit derives
    assert_typed(httpx.post(url, data={"prompt": big}, headers=AUTH, timeout=60), 413, "image_too_large")
    r = httpx.post(f"{front.url}/v1/generate", content=b'{"prompt": "a cat",}', headers={**AUTH,
                   "content-type": "application/json"}, timeout=60)  # fmt: skip
    assert_typed(r, 422, "invalid_request")

    lines = access_lines(front, "/generate/")
    assert len(lines) == 4, lines
    ok, empty, unauthorized, too_large = lines
    assert re.search(rf"status=200 code=ok in=\d+ out=[1-9]\d+ seconds=[\d.]+ worker={worker.url}$", ok)
    assert re.search(r"status=422 code=empty_prompt in=7 out=\d+ seconds=[\d.]+ worker=-$", empty)
    assert "status=401 code=unauthorized" in unauthorized
    assert f"status=413 code=image_too_large in={len(big) + len('prompt=')}" in too_large
    assert len(access_lines(front, "/v1/generate")) == 1

    metrics = httpx.get(f"{front.url}/metrics", headers=AUTH).text
    for code, status in [("ok", 200), ("empty_prompt", 422), ("unauthorized", 401), ("image_too_large", 413)]:
        pattern = rf'splatgen_requests_total\{{code="{code}",route="/generate/",status="{status}"\}} 1\.0'
        assert re.search(pattern, metrics), (code, metrics)
    assert re.search(r'code="invalid_request",route="/v1/generate",status="422"\} 1\.0', metrics)

    outcomes = httpx.get(f"{front.url}/status", headers=AUTH).json()["outcomes"]
    assert outcomes == {
        "ok": 1,
        "empty_prompt": 1,
        "unauthorized": 1,
        "image_too_large": 1,
        "invalid_request": 1,
    }
    summary = httpx.get(f"{front.url}/ui/api/summary", headers=AUTH).json()
    assert summary["outcomes"] == outcomes


def test_malformed_json_gets_a_message_a_person_can_read(stack: tuple[Service, Service]) -> None:
    _, front = stack
    r = httpx.post(f"{front.url}/v1/generate", content=b'{"prompt": "a cat",}',
                   headers={**AUTH, "content-type": "application/json"}, timeout=60)  # fmt: skip
    message = str(assert_typed(r, 422, "invalid_request")["message"])
    assert (
        message
        == "the body is not valid JSON: Expecting property name enclosed in double quotes at character 19"
    )


def test_info_goes_to_stdout_and_warnings_to_stderr(tmp_path: Path) -> None:
    """Under PM2 stdout is *-out.log and stderr *-error.log: an error log full of INFO hides real errors."""
    port = free_port()
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    env = {"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin", "SPLATGEN_EXIT_ON_LOAD_ERROR": "false"}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # TRELLIS cannot load here (no CUDA): the worker logs one ERROR line and keeps serving 503s.
        proc = subprocess.Popen([*SPLATGEN, "worker", "--backend", "trellis", "--port", str(port)], cwd=REPO,
                                env=env, stdout=stdout, stderr=stderr)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "cannot start" not in err.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
                time.sleep(0.1)
            r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prompt": "a cat"}, timeout=60)
            assert_typed(r, 503, "not_ready")
        finally:
            proc.terminate()
            proc.wait(30)
    info, problems = out.read_text(), err.read_text()
    assert "INFO splatgen.access: POST /generate status=503 code=not_ready" in info
    assert "INFO uvicorn.error: Uvicorn running on" in info
    assert "WARNING" not in info and "ERROR" not in info
    assert "ERROR splatgen.worker: backend trellis cannot start" in problems
    assert "INFO" not in problems, problems
