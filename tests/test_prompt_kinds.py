"""Telling an image from text, over real HTTP on the miner's route (README: "Telling an image from text").

Every base64 spelling an encoder writes is an image when it decodes to one; a long unbroken base64-looking
string that is not an image is refused, never served as text; short real text stays text.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from test_front import assert_typed, assert_valid_ply, front_env

from generation.prompts import MIN_IMAGE_B64_CHARS
from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "12000"}


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("kinds")
    with running("worker", tmp, SMALL) as worker, running("front", tmp, front_env(worker)) as front:
        yield front


def small_png() -> bytes:
    """A 48x48 PNG whose standard base64 holds '+' or '/' (so the URL-safe spelling differs) and needs padding."""
    for seed in range(200):
        img = Image.new("RGB", (48, 48), "white")
        img.paste(Image.new("RGB", (24, 24), (30, 160, 40 + seed)), (12, 12))
        buffer = io.BytesIO()
        img.save(buffer, "PNG")
        data = buffer.getvalue()
        encoded = base64.b64encode(data).decode()
        if encoded.endswith("=") and ("+" in encoded or "/" in encoded):
            return data
    raise AssertionError("no suitable picture")


def served_kind(front: Service, prompt: str) -> str:
    r = httpx.post(f"{front.url}/generate/", data={"prompt": prompt}, timeout=60)
    assert_valid_ply(r)
    return str(httpx.get(f"{front.url}/status").json()["generations"][-1]["kind"])


PNG = small_png()
STANDARD = base64.b64encode(PNG).decode()
SPELLINGS = {
    "padded": STANDARD,
    "unpadded": STANDARD.rstrip("="),
    "data URL": "data:image/png;base64," + STANDARD,
    "wrapped at 76 columns": "\n".join(STANDARD[i : i + 76] for i in range(0, len(STANDARD), 76)),
    "wrapped with CRLF": "\r\n".join(STANDARD[i : i + 76] for i in range(0, len(STANDARD), 76)) + "\r\n",
    "URL-safe": base64.urlsafe_b64encode(PNG).decode(),
    "URL-safe unpadded": base64.urlsafe_b64encode(PNG).decode().rstrip("="),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_base64_spelling_of_an_image_is_an_image(front: Service, spelling: str) -> None:
    assert served_kind(front, SPELLINGS[spelling]) == "image"


def test_a_long_unpadded_image_is_not_read_as_text(front: Service) -> None:
    # Longer than the 1024-character text limit: before, this was prompt_too_long.
    img = Image.effect_noise((40, 40), 60).convert("RGB")
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    unpadded = base64.b64encode(buffer.getvalue()).decode().rstrip("=")
    assert len(unpadded) > 1024
    assert served_kind(front, unpadded) == "image"


@pytest.mark.parametrize(
    "prompt",
    [
        base64.b64encode(os.urandom(600)).decode(),  # 800 characters of base64, not an image
        base64.b64encode(os.urandom(600)).decode().rstrip("="),
        "QUJD" * (MIN_IMAGE_B64_CHARS // 4),  # exactly the threshold
        "data:image/png;base64,aGVsbG8=",  # the prefix says image: short does not make it text
        "data:image/png;base64," + base64.b64encode(b"GIF89a" + os.urandom(90)).decode(),
    ],
    ids=["random-800", "random-unpadded", "at-threshold", "data-url-short", "data-url-not-png"],
)
def test_base64_that_is_not_an_image_is_invalid_image(front: Service, prompt: str) -> None:
    assert_typed(
        httpx.post(f"{front.url}/generate/", data={"prompt": prompt}, timeout=60), 422, "invalid_image"
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat",  # decodes as base64 once the space is gone: still text
        "cat",
        "hello",
        "teapot",
        "Zm9vYmFy",  # valid base64 of "foobar", but a short word is a word
        "Q" * (MIN_IMAGE_B64_CHARS - 1),  # one under the threshold
        "a red ceramic teapot with a long curved spout and a bamboo handle " * 3,
    ],
    ids=["a-cat", "cat", "hello", "teapot", "foobar-b64", "under-threshold", "sentence"],
)
def test_real_text_stays_text(front: Service, prompt: str) -> None:
    assert served_kind(front, prompt) == "text"
