"""Image prompts in every pixel mode Pillow opens: content kept (distinct colours in, distinct colours out)
or a typed refusal; and an image no pixel of which is opaque enough is refused before a worker is involved.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from image_payloads import png_bytes, raw_png
from PIL import Image
from test_front import assert_typed, assert_valid_ply, front_env

from generation.image_input import prepare_image, to_eight_bit
from generation.testing import Service, running

SMALL = {"SPLATGEN_PROCEDURAL_GAUSSIANS": "12000"}
LIMIT = 20 * 1024 * 1024
SIDE = 48
BANDS = 3


def band_mask(index: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[:, index * SIDE // BANDS : (index + 1) * SIDE // BANDS] = True
    return mask


def banded(levels: list[object], dtype: str, channels: int = 0) -> np.ndarray:
    """SIDE x SIDE pixels in BANDS vertical bands, band i filled with levels[i]."""
    shape = (SIDE, SIDE, channels) if channels else (SIDE, SIDE)
    out = np.zeros(shape, dtype)
    for i, level in enumerate(levels):
        out[band_mask(i)] = level
    return out


def jpeg_cmyk() -> bytes:
    img = Image.new("CMYK", (SIDE, SIDE))
    for i, level in enumerate([(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 200)]):
        img.paste(level, (i * SIDE // BANDS, 0, (i + 1) * SIDE // BANDS, SIDE))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    img = Image.fromarray(banded([0, 1, 2], "uint8"), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    return png_bytes(img, transparency=2)


# Every mode Pillow can open from a PNG or JPEG, made as a real file of BANDS distinct colours.
FILES: dict[str, Callable[[], bytes]] = {
    "I;16 grey 16-bit": lambda: raw_png(banded([1000, 30000, 60000], "uint16"), 0, 16),
    "I;16 via Pillow": lambda: png_bytes(Image.fromarray(banded([200, 9000, 50000], "uint16"))),
    "RGB 16-bit": lambda: raw_png(banded([(65535, 0, 0), (0, 40000, 0), (0, 0, 65535)], "uint16", 3), 2, 16),
    "RGBA 16-bit": lambda: raw_png(
        banded([(65535, 0, 0, 65535), (0, 40000, 0, 65535), (0, 0, 65535, 65535)], "uint16", 4), 6, 16
    ),
    "LA 16-bit": lambda: raw_png(banded([(1000, 65535), (30000, 65535), (60000, 65535)], "uint16", 2), 4, 16),
    "CMYK JPEG": jpeg_cmyk,
    "LA": lambda: png_bytes(Image.fromarray(banded([(10, 255), (120, 255), (240, 255)], "uint8", 2), "LA")),
    "P with tRNS": palette_with_transparency,
    "1 bilevel": lambda: png_bytes(Image.fromarray(banded([0, 255, 0], "uint8")).convert("1")),
    "L": lambda: png_bytes(Image.fromarray(banded([10, 128, 250], "uint8"), "L")),
}
# "1" has two levels, and band 2 of the palette image is fully transparent.
DISTINCT = {"1 bilevel": 2, "P with tRNS": 2}


def band_colours(image: Image.Image) -> list[np.ndarray]:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    return [rgba[band_mask(i)].mean(axis=0) for i in range(BANDS) if rgba[band_mask(i)][:, 3].mean() > 0]


@pytest.mark.parametrize("name", list(FILES))
def test_every_mode_keeps_distinct_colours(name: str) -> None:
    data = FILES[name]()
    with Image.open(io.BytesIO(data)) as original:
        source_mode = original.mode
    prepared = prepare_image(data, LIMIT)
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.mode in ("RGB", "RGBA", "L", "LA", "P", "1"), out.mode
        assert out.size == (SIDE, SIDE)
        colours = band_colours(out)
    distinct = {tuple(np.round(c[:3] / 20)) for c in colours}
    assert len(distinct) == DISTINCT.get(name, BANDS), (source_mode, colours)
    for i in range(len(colours)):
        for j in range(i + 1, len(colours)):
            gap = np.abs(colours[i][:3] - colours[j][:3]).max()
            assert gap == 0 or gap > 20, (source_mode, colours)
    # Anything Pillow itself would clip (16 and 32 bits) was re-encoded as 8-bit PNG.
    if source_mode.startswith("I") or source_mode == "CMYK":
        assert prepared.converted and prepared.format == "PNG"


@pytest.mark.parametrize(
    ("levels", "dtype", "mode"),
    [
        ([0.1, 0.5, 0.9], "float32", "F"),
        ([-3.0, 10.0, 900.0], "float32", "F"),
        ([300, 20000, 65000], "int32", "I"),
        ([-70000, 0, 90000], "int32", "I"),
    ],
)
def test_float_and_32_bit_images_are_scaled_not_clipped(levels: list[float], dtype: str, mode: str) -> None:
    # No PNG, JPEG or WebP file opens in these modes; a backend could still meet them after a conversion.
    out = to_eight_bit(Image.fromarray(banded(levels, dtype), mode))
    grey = [c[0] for c in band_colours(out)]
    assert grey[0] < grey[1] < grey[2], grey
    assert grey[2] - grey[0] > 150


def test_nan_pixels_are_invalid_image() -> None:
    with pytest.raises(Exception) as info:
        to_eight_bit(Image.fromarray(banded([0.1, float("nan"), 0.9], "float32"), "F"))
    assert getattr(info.value, "code", None) == "invalid_image"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("modes")
    with running("worker", tmp, SMALL) as worker, running("front", tmp, front_env(worker)) as front:
        yield worker, front


def on_white(levels: list[int]) -> np.ndarray:
    """A 16-bit grey picture: white border, two grey squares (the subject) in the middle."""
    pixels = np.full((64, 64), 65535, np.uint16)
    pixels[16:48, 12:32] = levels[0]
    pixels[16:48, 32:52] = levels[1]
    return pixels


def splat_greys(r: httpx.Response) -> np.ndarray:
    splat = assert_valid_ply(r)
    return np.asarray(splat.colors, dtype=np.float64).mean(axis=1)


@pytest.mark.parametrize("where", ["front", "worker"])
def test_sixteen_bit_grey_keeps_its_subject(stack: tuple[Service, Service], where: str) -> None:
    worker, front = stack
    payload = base64.b64encode(raw_png(on_white([2000, 30000]), 0, 16)).decode()
    url = f"{front.url}/generate/" if where == "front" else f"{worker.url}/generate"
    r = (
        httpx.post(url, data={"prompt": payload}, timeout=60)
        if where == "front"
        else httpx.post(url, json={"image_b64": payload}, timeout=60)
    )
    greys = splat_greys(r)
    # Two grey levels made two families of gaussians (dark ~0.03, mid ~0.46), not one white surface.
    assert (greys < 0.2).mean() > 0.2, np.percentile(greys, [5, 50, 95])
    assert ((greys > 0.3) & (greys < 0.65)).mean() > 0.2, np.percentile(greys, [5, 50, 95])


def worker_generate_calls(worker: Service) -> int:
    return len(re.findall(r"POST /generate status=", worker.log()))


def test_semi_transparent_subject_is_refused_by_the_front_end(stack: tuple[Service, Service]) -> None:
    worker, front = stack
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (200, 40, 40)
    rgba[..., 3] = 180
    payload = base64.b64encode(png_bytes(Image.fromarray(rgba, "RGBA"))).decode()
    before = worker_generate_calls(worker)
    for r in (
        httpx.post(f"{front.url}/generate/", data={"prompt": payload}, timeout=60),
        httpx.post(f"{front.url}/v1/generate", json={"image_b64": payload}, timeout=60),
    ):
        body = assert_typed(r, 422, "invalid_image")
        assert "no pixel is opaque enough: TRELLIS keeps alpha > 204" in str(body["message"])
        assert "alpha 180" in str(body["message"])
    assert worker_generate_calls(worker) == before
    # The worker, called directly, gives the same answer.
    direct = httpx.post(f"{worker.url}/generate", json={"image_b64": payload}, timeout=60)
    assert "no pixel is opaque enough" in str(assert_typed(direct, 422, "invalid_image")["message"])
