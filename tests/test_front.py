"""The front end over real HTTP, in front of real worker processes."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_worker import spz_header_ok, validator_accepts

from diagnostics import Splat
from diagnostics.ply_fixer import DEFAULT_TRIGGER
from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "20000"}


def front_env(*workers: Service, **extra: str) -> dict[str, str]:
    return {
        "SPLATGEN_WORKERS": ",".join(w.url for w in workers),
        "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.3",
        **extra,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("stack")
    with running("worker", tmp, SMALL) as worker, running("front", tmp, front_env(worker)) as front:
        yield worker, front


def image_b64(fmt: str, size: tuple[int, int] = (96, 96)) -> str:
    img = Image.new("RGB", size, "white")
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), (30, 160, 40)), (size[0] // 4, size[1] // 4))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def assert_valid_ply(r: httpx.Response) -> Splat:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    count = int(r.headers["x-gaussian-count"])
    spz_header_ok(r.content, count)
    splat = Splat.from_ply_bytes(r.content)
    assert len(splat) == count
    validator_accepts(splat)
    return splat


def assert_typed(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    assert body["message"]
    assert "Traceback" not in r.text
    if status == 503:
        assert int(r.headers["retry-after"]) > 0
    return body


def test_miner_form_post_returns_raw_ply(stack: tuple[Service, Service]) -> None:
    _, front = stack
    # Exactly what the 404 miner sends: aiohttp data={"prompt": ...} -> urlencoded form.
    r = httpx.post(f"{front.url}/generate/", data={"prompt": "a wooden rocking chair"}, timeout=60)
    splat = assert_valid_ply(r)
    # The procedural splat is not faint (mean logit well above the default trigger): served unfixed.
    opacity = splat["opacity"].astype(np.float64)
    assert opacity[np.isfinite(opacity)].mean() > DEFAULT_TRIGGER
    assert r.headers["x-opacity-fixed"] == "false"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_miner_base64_image_prompt(stack: tuple[Service, Service], fmt: str) -> None:
    _, front = stack
    r = httpx.post(f"{front.url}/generate/", data={"prompt": image_b64(fmt)}, timeout=60)
    splat = assert_valid_ply(r)
    colours = splat.colors
    assert colours[:, 1].mean() > colours[:, 0].mean() + 0.2  # the green square was lifted, not the text path
    status = httpx.get(f"{front.url}/status").json()
    assert status["generations"][-1]["kind"] == "image"


def test_competition_multipart_contract(stack: tuple[Service, Service]) -> None:
    _, front = stack
    jpeg = base64.b64decode(image_b64("JPEG"))
    files = {"prompt_image_file": ("prompt.jpg", jpeg, "image/jpeg")}
    a = httpx.post(f"{front.url}/generate", files=files, data={"seed": "4"}, timeout=60)
    b = httpx.post(f"{front.url}/generate", files=files, data={"seed": "4"}, timeout=60)
    assert_valid_ply(a)
    assert a.content == b.content


def test_json_endpoint_and_status(stack: tuple[Service, Service]) -> None:
    worker, front = stack
    r = httpx.post(f"{front.url}/v1/generate", json={"prompt": "a golden trophy cup", "seed": 9}, timeout=60)
    assert_valid_ply(r)
    assert r.headers["x-worker"] == worker.url
    status = httpx.get(f"{front.url}/status").json()
    assert status["workers"][0]["healthy"] is True
    assert status["thresholds"]["memory_cleanup_gb"] == 12.0
    assert status["thresholds"]["memory_refuse_gb"] == 14.0
    last = status["generations"][-1]
    assert last["prompt"] == "a golden trophy cup"
    assert last["gaussians"] == int(r.headers["x-gaussian-count"])
    assert last["memory"]["action"] == "ok"
    assert httpx.get(f"{front.url}/health").json()["healthy_workers"] == 1
    metrics = httpx.get(f"{front.url}/metrics").text
    assert re.search(r'splatgen_requests_total\{code="ok",route="/v1/generate",status="200"\} [1-9]', metrics)
    assert "splatgen_memory_check_seconds_count" in metrics


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"prompt": ""}}, 422, "empty_prompt"),
        ({"data": {"prompt": "   \t "}}, 422, "empty_prompt"),
        ({"data": {"prompt": "a " * 600}}, 422, "prompt_too_long"),
        ({"data": {"prompt": base64.b64encode(os.urandom(3000)).decode()}}, 422, "invalid_image"),
        ({"data": {}}, 422, "missing_field"),
        ({"json": {"prompt": "a chair"}}, 415, "unsupported_media_type"),
        (
            {"content": b"prompt=%ZZ%", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
    ],
)
def test_bad_miner_input_is_a_typed_4xx(
    stack: tuple[Service, Service], kwargs: dict, status: int, code: str
) -> None:
    _, front = stack
    assert_typed(httpx.post(f"{front.url}/generate/", timeout=30, **kwargs), status, code)


def test_bad_competition_and_json_input(stack: tuple[Service, Service]) -> None:
    _, front = stack
    garbage = {"prompt_image_file": ("p.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg")}
    assert_typed(httpx.post(f"{front.url}/generate", files=garbage, data={"seed": "1"}), 422, "invalid_image")
    assert_typed(httpx.post(f"{front.url}/generate", data={"seed": "1"}), 422, "missing_field")
    assert_typed(httpx.post(f"{front.url}/v1/generate", json={"image_b64": "%%%"}), 422, "invalid_image")
    assert_typed(
        httpx.post(f"{front.url}/v1/generate", json={"prompt": "a", "image_b64": "x"}), 422, "invalid_prompt"
    )
    assert_typed(
        httpx.post(f"{front.url}/v1/generate", json={"prompt": "a", "params": {"x": 1}}),
        422,
        "invalid_request",
    )


def test_image_over_the_limit_is_refused(tmp_path: Path) -> None:
    with (
        running("worker", tmp_path, SMALL) as worker,
        running("front", tmp_path, front_env(worker, SPLATGEN_MAX_IMAGE_MB="0.01")) as front,
    ):
        big = image_b64("PNG", (400, 400))
        noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
        buf = io.BytesIO()
        noisy.save(buf, "PNG")
        big = base64.b64encode(buf.getvalue()).decode()
        assert_typed(httpx.post(f"{front.url}/generate/", data={"prompt": big}), 413, "image_too_large")


def test_degenerate_output_is_never_served(stack: tuple[Service, Service]) -> None:
    _, front = stack
    # 5000 gaussians is under the validators' 7000 minimum; the request fixed the count, so no seed helps:
    # refused at once, without a retry.
    r = httpx.post(
        f"{front.url}/v1/generate", json={"prompt": "a cup", "params": {"num_gaussians": 5000}}, timeout=60
    )
    body = assert_typed(r, 503, "degenerate_output")
    assert any(reason["code"] == "too_few_gaussians" for reason in body["reasons"])  # type: ignore[union-attr]
    assert "params.num_gaussians" in str(body["message"])
    metrics = httpx.get(f"{front.url}/metrics").text
    assert 'splatgen_retries_total{reason="degenerate"}' not in metrics


def test_faint_splats_are_fixed_preserving_the_spread(tmp_path: Path) -> None:
    env = front_env(SPLATGEN_OPACITY_FIX_TRIGGER="3.0", SPLATGEN_OPACITY_FIX_TARGET="4.0")
    with (
        running("worker", tmp_path, SMALL) as worker,
        running("front", tmp_path, {**env, **front_env(worker)}) as front,
    ):
        payload = {"prompt": "a blue vintage bicycle", "seed": 2}
        raw = Splat.from_ply_bytes(httpx.post(f"{worker.url}/generate", json=payload, timeout=60).content)
        r = httpx.post(f"{front.url}/v1/generate", json=payload, timeout=60)
        fixed = assert_valid_ply(r)
        assert r.headers["x-opacity-fixed"] == "true"
        before, after = raw["opacity"].astype(np.float64), fixed["opacity"].astype(np.float64)
        assert after.mean() == pytest.approx(4.0, abs=1e-3)
        assert after.std() == pytest.approx(before.std(), rel=1e-5)
        # Order is kept: sorted by the old logits, the new ones never decrease (float32 may tie neighbours).
        assert (np.diff(after[np.argsort(before, kind="stable")]) >= 0).all()
        for name in raw.names:
            if name != "opacity":
                assert np.array_equal(raw[name], fixed[name])


def _post_in_thread(url: str, payload: dict, out: list, timeout: float = 60) -> threading.Thread:
    def run() -> None:
        try:
            out.append(httpx.post(url, json=payload, timeout=timeout))
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll a state the service reports until it holds; the deadline only bounds a broken service."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


def front_status(front: Service) -> dict:
    return httpx.get(f"{front.url}/status", timeout=30).json()


def test_queue_full_and_queue_timeout(tmp_path: Path) -> None:
    # The generation outlasts the 1 s queue timeout many times over, so the order below cannot flip.
    slow = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": "8"}
    with (
        running("worker", tmp_path, slow) as worker,
        running(
            "front", tmp_path, front_env(worker, SPLATGEN_MAX_QUEUE="1", SPLATGEN_QUEUE_TIMEOUT_S="1")
        ) as front,
    ):
        url = f"{front.url}/v1/generate"
        generating: list = []
        first = _post_in_thread(url, {"prompt": "a cup 0"}, generating)
        worker.wait_generating()
        queued: list = []
        second = _post_in_thread(url, {"prompt": "a cup 1"}, queued)
        wait_for(lambda: front_status(front)["queue_depth"] == 1, "the second request waits in the queue")
        # The queue (1 place) is full: the third is refused at once.
        assert_typed(httpx.post(url, json={"prompt": "a cup 2"}, timeout=60), 503, "overloaded")
        second.join()
        assert_typed(queued[0], 503, "timeout")
        assert not generating, "the first generation ended before the queued request timed out"
        first.join()
        assert_valid_ply(generating[0])
        assert front_status(front)["outcomes"] == {"ok": 1, "overloaded": 1, "timeout": 1}


def test_client_that_disconnects_while_queued_costs_no_gpu_time(tmp_path: Path) -> None:
    slow = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": "6"}
    with running("worker", tmp_path, slow) as worker, running("front", tmp_path, front_env(worker)) as front:
        results: list = []
        first = _post_in_thread(f"{front.url}/v1/generate", {"prompt": "first"}, results)
        worker.wait_generating()
        body = b'{"prompt": "impatient"}'
        request = (
            f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", front.port), timeout=30) as impatient:
            impatient.sendall(request)
            wait_for(lambda: front_status(front)["queue_depth"] == 1, "the impatient request is queued")
        # The client has gone while its request waits; it is dropped before it reaches the worker.
        wait_for(lambda: front_status(front)["outcomes"].get("client_gone") == 1, "the drop is counted")
        assert front_status(front)["queue_depth"] == 0
        assert not results, "the first generation ended before the queued client left"
        first.join()
        assert_valid_ply(results[0])
        assert httpx.get(f"{worker.url}/health").json()["generations"] == 1
        assert front_status(front)["outcomes"] == {"ok": 1, "client_gone": 1}


def test_two_workers_share_the_load(tmp_path: Path) -> None:
    slow = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": "1"}
    with (
        running("worker", tmp_path, slow) as w1,
        running("worker", tmp_path, slow) as w2,
        running("front", tmp_path, front_env(w1, w2)) as front,
    ):
        results: list = []
        threads = [
            _post_in_thread(f"{front.url}/v1/generate", {"prompt": f"a duck {i}"}, results) for i in range(4)
        ]
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results)
        assert {r.headers["x-worker"] for r in results} == {w1.url, w2.url}


def test_worker_killed_mid_generation(tmp_path: Path) -> None:
    slow = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": "3"}
    with (
        running("worker", tmp_path, slow) as w1,
        running("worker", tmp_path, SMALL) as w2,
        running("front", tmp_path, front_env(w1)) as alone,
        running("front", tmp_path, front_env(w1, w2)) as pair,
    ):
        # Alone: the in-flight request gets a typed 503, never partial bytes.
        results: list = []
        t = _post_in_thread(f"{alone.url}/v1/generate", {"prompt": "doomed"}, results)
        w1.wait_generating()
        os.kill(w1.pid, signal.SIGKILL)
        t.join()
        assert_typed(results[0], 503, "worker_unavailable")
        assert_typed(
            httpx.post(f"{alone.url}/v1/generate", json={"prompt": "next"}), 503, "worker_unavailable"
        )
        assert httpx.get(f"{alone.url}/health").status_code == 503
        # With a second worker, the pair front end routes around the dead one.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and httpx.get(f"{pair.url}/status").json()["workers"][0]["healthy"]:
            time.sleep(0.1)
        r = httpx.post(f"{pair.url}/v1/generate", json={"prompt": "rescued"}, timeout=60)
        assert_valid_ply(r)
        assert r.headers["x-worker"] == w2.url


def test_memory_pressure_cleans_up_then_refuses_and_recycles(tmp_path: Path) -> None:
    leaky = {**SMALL, "SPLATGEN_PROCEDURAL_LEAK_MB": "150"}
    with running("worker", tmp_path, leaky) as worker:
        base_gb = httpx.get(f"{worker.url}/memory").json()["rss_bytes"] / 1024**3
        env = front_env(worker, SPLATGEN_MEMORY_CLEANUP_GB=f"{base_gb + 0.1:.3f}",
                        SPLATGEN_MEMORY_REFUSE_GB=f"{base_gb + 0.25:.3f}")  # fmt: skip
        with running("front", tmp_path, env) as front:
            url = f"{front.url}/v1/generate"
            # Each generation leaks 150 MB (0.146 GB) that cleanup cannot free. Before the first the worker
            # is at its base: ok. Before the second it is 0.146 GB up, past the cleanup threshold (0.1) and
            # under the refusal one (0.25): cleaned, then served. Before the third it is 0.29 GB up:
            # cleaned, still over, refused, and the worker is told to recycle.
            first = httpx.post(url, json={"prompt": "a lamp 0"}, timeout=60)
            assert_valid_ply(first)
            second = httpx.post(url, json={"prompt": "a lamp 1"}, timeout=60)
            assert_valid_ply(second)
            third = assert_typed(
                httpx.post(url, json={"prompt": "a lamp 2"}, timeout=60), 503, "memory_pressure"
            )
            assert third["memory"]["action"] == "refused"  # type: ignore[index]
            actions = [g["memory"]["action"] for g in front_status(front)["generations"]]
            assert actions == ["ok", "cleaned"]
            metrics = httpx.get(f"{front.url}/metrics").text
            assert re.search(r'splatgen_memory_checks_total\{action="ok"\} 1\.0', metrics), metrics
            assert re.search(r'splatgen_memory_checks_total\{action="cleaned"\} 1\.0', metrics), metrics
            assert re.search(r'splatgen_memory_checks_total\{action="refused"\} 1\.0', metrics), metrics
            # The worker was asked to recycle: it finishes and exits (PM2 would start it fresh).
            worker.proc.wait(20)
            assert worker.proc.returncode == 0
            # Until a fresh worker comes up, requests get a typed refusal, never a hang or a 500.
            assert_typed(httpx.post(url, json={"prompt": "a lamp 3"}, timeout=60), 503, "worker_unavailable")


def test_front_binds_loopback_and_guards_with_a_token(tmp_path: Path) -> None:
    with (
        running("worker", tmp_path, SMALL) as worker,
        running("front", tmp_path, front_env(worker, SPLATGEN_API_TOKEN="tok")) as front,
    ):
        assert httpx.get(f"{front.url}/health").status_code == 200
        assert_typed(httpx.get(f"{front.url}/status"), 401, "unauthorized")
        assert_typed(httpx.post(f"{front.url}/generate/", data={"prompt": "a"}), 401, "unauthorized")
        ok = httpx.post(f"{front.url}/generate/", data={"prompt": "a cup"}, headers={"Authorization": "Bearer tok"},
                        timeout=60)  # fmt: skip
        assert_valid_ply(ok)
        assert "Uvicorn running on http://127.0.0.1:" in front.log()


def test_generate_cli_writes_the_splat_atomically(stack: tuple[Service, Service], tmp_path: Path) -> None:
    import subprocess
    import sys

    _, front = stack
    out = tmp_path / "chair.ply"
    cli = [sys.executable, "-m", "generation.cli", "generate", "--url", front.url]
    done = subprocess.run([*cli, "a red chair", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "20,000 gaussians" in done.stdout
    assert len(Splat.from_ply_bytes(out.read_bytes())) == 20000

    png = tmp_path / "prompt.png"
    png.write_bytes(base64.b64decode(image_b64("PNG")))
    done = subprocess.run([*cli, "--image", str(png), "-o", str(tmp_path / "img.ply")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr

    refused = subprocess.run([*cli, "   ", "-o", str(tmp_path / "none.ply")], capture_output=True, text=True)
    assert refused.returncode == 1
    assert "empty_prompt" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "none.ply").exists()
    assert list(tmp_path.glob(".*.tmp")) == []
