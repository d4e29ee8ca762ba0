"""The worker over real HTTP: a real uvicorn process, real requests, the real PLY bytes parsed back."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from diagnostics import Splat
from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "20000"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running("worker", tmp_path_factory.mktemp("worker"), SMALL) as service:
        yield service


def png_b64(colour: str = "red") -> str:
    buf = io.BytesIO()
    img = Image.new("RGB", (96, 96), "white")
    img.paste(Image.new("RGB", (48, 48), colour), (24, 24))
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def validator_accepts(splat: Splat) -> None:
    """The structural rules 404's validators apply before scoring (contracts.md section 3), plus finiteness."""
    assert len(splat) >= 7000
    alpha = 1.0 / (1.0 + np.exp(-splat["opacity"].astype(np.float64)))
    assert (alpha < 1e-3).mean() <= 0.8
    rot = splat.stack(("rot_0", "rot_1", "rot_2", "rot_3"))
    assert not np.all(rot == np.array([1, 0, 0, 0], dtype=np.float32))
    for name in splat.names:
        assert np.isfinite(splat[name]).all(), name


def spz_header_ok(ply: bytes, count: int) -> None:
    lines = ply[: ply.index(b"end_header\n")].decode().splitlines()
    assert lines[0] == "ply"
    assert lines[1] == "format binary_little_endian 1.0"
    assert lines[2] == f"element vertex {count}"
    assert all(line.startswith("property float ") for line in lines[3:])


def test_health_reports_the_procedural_stand_in(worker: Service) -> None:
    body = httpx.get(f"{worker.url}/health").json()
    assert body["status"] == "ok"
    assert body["backend"]["name"] == "procedural"
    assert "not a learned model" in body["backend"]["description"]


def test_text_prompt_returns_a_valid_ply(worker: Service) -> None:
    sent = time.monotonic()
    r = httpx.post(f"{worker.url}/generate", json={"prompt": "a red ceramic teapot", "seed": 3}, timeout=60)
    round_trip = time.monotonic() - sent
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    count = int(r.headers["x-gaussian-count"])
    assert count == 20000
    # The backend's own time: some work was done, and it is part of what the client waited for.
    assert 0 < float(r.headers["x-generation-seconds"]) <= round_trip
    spz_header_ok(r.content, count)
    splat = Splat.from_ply_bytes(r.content)
    assert len(splat) == count
    validator_accepts(splat)


def test_image_prompt_returns_a_relief_coloured_by_the_image(worker: Service) -> None:
    r = httpx.post(f"{worker.url}/generate", json={"image_b64": png_b64("blue")}, timeout=60)
    assert r.status_code == 200, r.text
    splat = Splat.from_ply_bytes(r.content)
    validator_accepts(splat)
    # The white background is keyed out: the splat is mostly the blue square.
    assert splat.colors[:, 2].mean() > splat.colors[:, 0].mean() + 0.3


def test_same_request_same_bytes_other_seed_other_bytes(worker: Service) -> None:
    def gen(seed: int) -> bytes:
        return httpx.post(
            f"{worker.url}/generate", json={"prompt": "a chair", "seed": seed}, timeout=60
        ).content

    assert gen(1) == gen(1)
    assert gen(1) != gen(2)


def test_params_override_the_count_and_unknown_params_are_refused(worker: Service) -> None:
    r = httpx.post(
        f"{worker.url}/generate", json={"prompt": "a duck", "params": {"num_gaussians": 9000}}, timeout=60
    )
    assert r.status_code == 200
    assert len(Splat.from_ply_bytes(r.content)) == 9000
    r = httpx.post(f"{worker.url}/generate", json={"prompt": "a duck", "params": {"bogus": 1}}, timeout=60)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": "   "}, "empty_prompt"),
        ({"prompt": "a " * 600}, "prompt_too_long"),
        ({"prompt": "a", "image_b64": png_b64()}, "invalid_prompt"),
        ({}, "invalid_prompt"),
        ({"image_b64": "not base64!"}, "invalid_image"),
        ({"image_b64": base64.b64encode(b"GIF89a not an image").decode()}, "invalid_image"),
        ({"prompt": "a", "seed": -1}, "invalid_request"),
    ],
)
def test_bad_input_gets_a_typed_4xx(worker: Service, body: dict[str, object], code: str) -> None:
    r = httpx.post(f"{worker.url}/generate", json=body, timeout=30)
    assert 400 <= r.status_code < 500
    assert r.json()["error"] == code
    assert "Traceback" not in r.text


def test_non_json_body_is_a_typed_error(worker: Service) -> None:
    r = httpx.post(
        f"{worker.url}/generate", content=b"\x00\xff garbage", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_memory_cleanup_and_metrics(worker: Service) -> None:
    mem = httpx.get(f"{worker.url}/memory").json()
    assert mem["pid"] == worker.pid
    assert mem["rss_bytes"] > 10 * 1024 * 1024
    assert mem["gpu"] is None
    cleanups_before = _metric(httpx.get(f"{worker.url}/metrics").text, "splatgen_worker_cleanups_total")
    cleaned = httpx.post(f"{worker.url}/cleanup", timeout=30).json()
    after = httpx.get(f"{worker.url}/memory").json()["rss_bytes"]
    # Cleanup reports the process's own RSS around its work, the same figure /memory and psutil read.
    assert cleaned["freed_bytes"] == cleaned["rss_before_bytes"] - cleaned["rss_after_bytes"]
    assert abs(cleaned["rss_before_bytes"] - mem["rss_bytes"]) < 32 * 1024 * 1024
    assert abs(cleaned["rss_after_bytes"] - after) < 32 * 1024 * 1024
    assert abs(cleaned["rss_after_bytes"] - worker.rss()) < 32 * 1024 * 1024
    assert cleaned["gpu"] is None
    text = httpx.get(f"{worker.url}/metrics").text
    assert _metric(text, "splatgen_worker_cleanups_total") == cleanups_before + 1
    assert "splatgen_worker_generations_total" in text
    assert _metric(text, "splatgen_worker_rss_bytes") > 10 * 1024 * 1024


def test_waiting_generation_does_not_block_health(tmp_path: Path) -> None:
    delay_s = 4.0
    env = {**SMALL, "SPLATGEN_PROCEDURAL_DELAY_S": str(delay_s)}
    with running("worker", tmp_path, env) as slow:
        results: list[httpx.Response] = []

        def gen() -> None:
            results.append(httpx.post(f"{slow.url}/generate", json={"prompt": "a cup"}, timeout=120))

        threads = [threading.Thread(target=gen) for _ in range(2)]
        for t in threads:
            t.start()
        # /health answers while a generation holds the lock (it says busy), and so does /memory: both
        # answers come before either generation has finished, so neither waited for the lock.
        slow.wait_generating()
        memory = httpx.get(f"{slow.url}/memory", timeout=30)
        assert memory.status_code == 200 and memory.json()["busy"] is True
        assert results == [], "a generation ended before /health and /memory answered"
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200]
        # Each generation slept the injected delay, and the backend's reported time includes it.
        assert all(float(r.headers["x-generation-seconds"]) >= delay_s for r in results)
        assert httpx.get(f"{slow.url}/health").json()["generations"] == 2


def test_leak_injection_grows_rss_and_recycle_exits(tmp_path: Path) -> None:
    env = {**SMALL, "SPLATGEN_PROCEDURAL_LEAK_MB": "64"}
    with running("worker", tmp_path, env) as leaky:
        before = httpx.get(f"{leaky.url}/memory").json()["rss_bytes"]
        for _ in range(3):
            assert (
                httpx.post(f"{leaky.url}/generate", json={"prompt": "a box"}, timeout=60).status_code == 200
            )
        httpx.post(f"{leaky.url}/cleanup", timeout=30)
        after = httpx.get(f"{leaky.url}/memory").json()["rss_bytes"]
        assert after - before >= 3 * 64 * 1024 * 1024 * 0.9
        assert httpx.post(f"{leaky.url}/recycle").status_code == 202
        leaky.proc.wait(20)
        assert leaky.proc.returncode == 0


def test_bearer_token_guards_everything_but_health(tmp_path: Path) -> None:
    with running("worker", tmp_path, {**SMALL, "SPLATGEN_API_TOKEN": "s3cret"}) as guarded:
        assert httpx.get(f"{guarded.url}/health").status_code == 200
        r = httpx.get(f"{guarded.url}/memory")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        ok = httpx.get(f"{guarded.url}/memory", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_oversized_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # The body limit is derived from the image limit: 0.5 MB images give a 1.25 MB limit.
    with running("worker", tmp_path, {**SMALL, "SPLATGEN_MAX_IMAGE_MB": "0.5"}) as small:
        r = httpx.post(f"{small.url}/generate", content=b"{" + b" " * (4 * 1024 * 1024) + b"}",
                       headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"


def test_trellis_without_cuda_exits_with_one_clear_line(tmp_path: Path) -> None:
    service = Service(["worker", "--backend", "trellis"], {}, 0, tmp_path / "trellis.log")
    try:
        code = service.proc.wait(120)
    finally:
        service.stop()
    assert code != 0
    lines = [line for line in service.log().splitlines() if "cannot start" in line]
    assert lines, service.log()
    assert "Traceback" not in service.log()
