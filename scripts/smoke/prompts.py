"""The smoke test's prompts: the text list, and simple images drawn with Pillow (sent base64, like the miner)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from smoke import SmokeError


@dataclass(frozen=True)
class SmokePrompt:
    kind: str  # "text" | "image"
    label: str
    value: str  # the text, or base64 of the image file


def draw_ball_png() -> bytes:
    """A shaded red ball on a white background, as PNG bytes."""
    image = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(image)
    for step in range(40):
        inset = 40 + step * 1.5
        shade = 120 + step * 3
        draw.ellipse(
            (inset - step, inset - step, 216 - step * 2.2, 216 - step * 2.2), fill=(shade + 40, 30, 30)
        )
    draw.ellipse((88, 80, 112, 104), fill=(255, 210, 210))
    return _encode(image, "PNG")


def draw_mug_jpeg() -> bytes:
    """A blue mug with a handle on a light grey background, as JPEG bytes."""
    image = Image.new("RGB", (256, 256), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((70, 70, 170, 200), radius=12, fill=(40, 80, 200))
    draw.ellipse((70, 58, 170, 82), fill=(25, 50, 140))
    draw.arc((150, 100, 210, 170), start=-90, end=90, fill=(40, 80, 200), width=14)
    draw.rectangle((84, 96, 100, 180), fill=(90, 130, 235))
    return _encode(image, "JPEG")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


IMAGE_PROMPTS: tuple[tuple[str, Callable[[], bytes]], ...] = (
    ("image: red ball (PNG)", draw_ball_png),
    ("image: blue mug (JPEG)", draw_mug_jpeg),
)


def read_text_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SmokeError(f"cannot read the prompt list {path}: {exc.strerror or exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SmokeError(f"the prompt list {path} has no prompts")
    return prompts


def build_prompts(texts: Sequence[str], generations: int, images: int) -> list[SmokePrompt]:
    """``generations`` prompts: the text list in order (repeated when short), then ``images`` images."""
    if images > generations:
        raise SmokeError(f"--images ({images}) cannot exceed --generations ({generations})")
    if images and not texts and generations > images:
        raise SmokeError("no text prompts to fill the run")
    out = [
        SmokePrompt("text", texts[i % len(texts)], texts[i % len(texts)]) for i in range(generations - images)
    ]
    for i in range(images):
        label, draw = IMAGE_PROMPTS[i % len(IMAGE_PROMPTS)]
        out.append(SmokePrompt("image", label, base64.b64encode(draw()).decode("ascii")))
    return out
