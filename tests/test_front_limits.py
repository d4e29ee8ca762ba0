"""Size limits over real HTTP: one rule for every generation route and every body shape.

An image up to SPLATGEN_MAX_IMAGE_MB (decoded bytes) is served on every route however it is sent; one
byte over gets 413 image_too_large with its real size; text over SPLATGEN_MAX_PROMPT_CHARS gets
prompt_too_long, also when it is megabytes long.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator

import httpx
import pytest
from image_payloads import padded_png, photo_like_png
from test_front import assert_typed, assert_valid_ply, front_env

from generation.testing import REPO, SPLATGEN, Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "12000"}
# A small image limit keeps just-under / just-over payloads cheap; the default limit is tested separately.
SMALL_IMAGE_MB = 1
SMALL_LIMIT = SMALL_IMAGE_MB * 1024 * 1024
PROMPT_CHARS = 300

Send = Callable[[str, bytes], httpx.Response]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def shapes(url: str) -> dict[str, Send]:
    """Every way an image can reach the front end, each as (route, body shape)."""
    return {
        "/generate/ urlencoded prompt": lambda _, d: httpx.post(
            f"{url}/generate/", data={"prompt": b64(d)}, timeout=120
        ),
        "/generate/ multipart prompt": lambda _, d: httpx.post(
            f"{url}/generate/", files={"prompt": (None, b64(d))}, timeout=120
        ),
        "/generate/ multipart file": lambda _, d: httpx.post(
            f"{url}/generate/", files={"prompt_image_file": ("p.png", d, "image/png")}, timeout=120
        ),
        "/generate urlencoded prompt": lambda _, d: httpx.post(
            f"{url}/generate", data={"prompt": b64(d)}, timeout=120
        ),
        "/generate multipart prompt": lambda _, d: httpx.post(
            f"{url}/generate", files={"prompt": (None, b64(d))}, timeout=120
        ),
        "/generate multipart file": lambda _, d: httpx.post(
            f"{url}/generate",
            files={"prompt_image_file": ("p.png", d, "image/png")},
            data={"seed": "3"},
            timeout=120,
        ),
        "/v1/generate json image_b64": lambda _, d: httpx.post(
            f"{url}/v1/generate", json={"image_b64": b64(d)}, timeout=120
        ),
        "/v1/generate json prompt": lambda _, d: httpx.post(
            f"{url}/v1/generate", json={"prompt": b64(d)}, timeout=120
        ),
    }


SHAPES = list(shapes("http://unused"))


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("limits")
    limits = {"SPLATGEN_MAX_IMAGE_MB": str(SMALL_IMAGE_MB), "SPLATGEN_MAX_PROMPT_CHARS": str(PROMPT_CHARS)}
    with (
        running("worker", tmp, {**SMALL, **limits}) as worker,
        running("front", tmp, front_env(worker, **limits)) as front,
    ):
        yield front


@pytest.fixture(scope="module")
def default_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("defaults")
    with running("worker", tmp, SMALL) as worker, running("front", tmp, front_env(worker)) as front:
        yield front


@pytest.fixture(scope="module")
def photo() -> bytes:
    data = photo_like_png(1024)
    assert 3 * 1024 * 1024 <= len(data) <= 4 * 1024 * 1024
    return data


@pytest.mark.parametrize("shape", SHAPES)
def test_image_at_the_limit_is_served(small_stack: Service, shape: str) -> None:
    image = padded_png(SMALL_LIMIT, seed=1)
    assert_valid_ply(shapes(small_stack.url)[shape](shape, image))


@pytest.mark.parametrize("shape", SHAPES)
def test_image_one_byte_over_the_limit_is_image_too_large(small_stack: Service, shape: str) -> None:
    image = padded_png(SMALL_LIMIT + 1, seed=2)
    body = assert_typed(shapes(small_stack.url)[shape](shape, image), 413, "image_too_large")
    assert f"{SMALL_LIMIT + 1:,} bytes" in str(body["message"])
    assert f"the limit is {SMALL_IMAGE_MB} MB" in str(body["message"])


@pytest.mark.parametrize("shape", SHAPES)
def test_photo_of_a_few_megabytes_is_served_with_default_limits(
    default_stack: Service, photo: bytes, shape: str
) -> None:
    r = shapes(default_stack.url)[shape](shape, photo)
    assert_valid_ply(r)
    last = httpx.get(f"{default_stack.url}/status").json()["generations"][-1]
    assert last["kind"] == "image"
    assert last["image_format"] == "PNG"


def test_file_over_the_default_limit_reports_its_real_size(default_stack: Service) -> None:
    # 27 MB: within the body limit, so the image check itself answers, with the real size.
    image = padded_png(27 * 1024 * 1024, seed=3)
    files = {"prompt_image_file": ("big.png", image, "image/png")}
    body = assert_typed(
        httpx.post(f"{default_stack.url}/generate", files=files, timeout=120), 413, "image_too_large"
    )
    assert "27.0 MB" in str(body["message"]) and "the limit is 20 MB" in str(body["message"])


def test_body_over_the_request_limit_is_image_too_large_on_generation_routes(default_stack: Service) -> None:
    # 33 MB of base64 is over the derived 30.5 MB body limit: refused from Content-Length before it is read.
    oversized = "A" * (33 * 1024 * 1024)
    r = httpx.post(f"{default_stack.url}/generate/", data={"prompt": oversized}, timeout=120)
    body = assert_typed(r, 413, "image_too_large")
    assert "over its 30.5 MB limit" in str(body["message"])
    assert "20 MB" in str(body["message"])


TEXT_SHAPES: dict[str, Callable[[str, str], httpx.Response]] = {
    "/generate/ urlencoded": lambda url, t: httpx.post(f"{url}/generate/", data={"prompt": t}, timeout=120),
    "/generate/ multipart": lambda url, t: httpx.post(
        f"{url}/generate/", files={"prompt": (None, t)}, timeout=120
    ),
    "/generate urlencoded": lambda url, t: httpx.post(f"{url}/generate", data={"prompt": t}, timeout=120),
    "/generate multipart": lambda url, t: httpx.post(
        f"{url}/generate", files={"prompt": (None, t)}, timeout=120
    ),
    "/v1/generate json": lambda url, t: httpx.post(f"{url}/v1/generate", json={"prompt": t}, timeout=120),
}


def sentence(chars: int) -> str:
    text = ("a red ceramic teapot with a bamboo handle " * (chars // 40 + 1))[:chars]
    return text[:-1] + "x"  # no trailing space for strip() to remove


@pytest.mark.parametrize("shape", list(TEXT_SHAPES))
def test_text_at_the_limit_is_served(small_stack: Service, shape: str) -> None:
    assert_valid_ply(TEXT_SHAPES[shape](small_stack.url, sentence(PROMPT_CHARS)))


@pytest.mark.parametrize("chars", [PROMPT_CHARS + 1, 1_500_000])  # megabytes, inside the 2 MB body limit
@pytest.mark.parametrize("shape", list(TEXT_SHAPES))
def test_text_over_the_limit_is_prompt_too_long(small_stack: Service, shape: str, chars: int) -> None:
    body = assert_typed(TEXT_SHAPES[shape](small_stack.url, sentence(chars)), 422, "prompt_too_long")
    assert f"{chars:,} characters" in str(body["message"])


def test_a_body_limit_that_would_cut_off_a_legal_image_is_refused_at_start() -> None:
    env = {"SPLATGEN_MAX_IMAGE_MB": "20", "SPLATGEN_MAX_REQUEST_MB": "10", "PATH": "/usr/bin:/bin"}
    for kind in ("front", "worker"):
        done = subprocess.run(
            [*SPLATGEN, kind, "--port", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert "SPLATGEN_MAX_REQUEST_MB=10 would cut off a legal image" in done.stderr
        assert "at least 30.5 MB" in done.stderr


@pytest.mark.parametrize("size", [1024 * 1024, 65 * 1024])
def test_oversized_headers_get_431(default_stack: Service, size: int) -> None:
    r = httpx.post(f"{default_stack.url}/generate/", data={"prompt": "a cat"}, headers={"X-Big": "a" * size},
                   timeout=60)  # fmt: skip
    body = assert_typed(r, 431, "headers_too_large")
    assert "the limit is 65,536 (SPLATGEN_MAX_HEADER_KB)" in str(body["message"])


def test_headers_under_the_cap_are_served(default_stack: Service) -> None:
    r = httpx.post(f"{default_stack.url}/generate/", data={"prompt": "a cat"}, headers={"X-Big": "a" * 60_000},
                   timeout=60)  # fmt: skip
    assert_valid_ply(r)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"prompt_image_file": (None, "")}, "'prompt_image_file' must be a file part"),
        ({"prompt": (None, "a cat"), "seed": (None, "")}, "seed: the field is empty"),
    ],
    ids=["file-as-text", "empty-seed"],
)
def test_form_fields_of_the_wrong_shape_are_refused(default_stack: Service, files: dict[str, object],
                                                    message: str) -> None:  # fmt: skip
    for route in ("/generate/", "/generate"):
        r = httpx.post(f"{default_stack.url}{route}", files=files, timeout=60)
        assert message in str(assert_typed(r, 422, "invalid_request")["message"])
