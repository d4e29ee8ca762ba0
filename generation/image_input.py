"""Image prompts: open with Pillow, bring every pixel mode to 8-bit RGB(A) with its content kept, and refuse
images no backend can use, with a true message and the code ``invalid_image``.

Both services call ``prepare_image``: the front end so that a bad image is refused before a worker is
involved, the worker because it can be called directly. An image that is already 8-bit comes back as the
very bytes it arrived as; any other is re-encoded as PNG once, so a backend never sees a 16-bit, float or
CMYK picture (Pillow's own conversions clip those to one white or black colour).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from generation.errors import ImageTooLarge, InvalidRequest, ServiceError

IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# TRELLIS crops an RGBA image to the pixels whose alpha exceeds 0.8 * 255 = 204; with none it has no object.
ALPHA_FOREGROUND = 204
# Modes every backend reads correctly as they are (Pillow converts them to RGB(A) without losing content).
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "LA", "PA"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def invalid_image(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_image")


def describe_mb(size: int) -> str:
    return f"{size / 1048576:.1f} MB"


def check_image_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLarge(
            f"the image is {describe_mb(size)} ({size:,} bytes); the limit is {max_bytes / 1048576:g} MB"
        )


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    format: str
    mode: str
    size: tuple[int, int]
    converted: bool


def prepare_image(data: bytes, max_bytes: int) -> PreparedImage:
    """Check size, format and content; return bytes any backend can decode without losing the subject."""
    check_image_size(len(data), max_bytes)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            fmt = opened.format or ""
            if fmt not in IMAGE_FORMATS:
                raise invalid_image(
                    f"the image is {fmt or 'of an unknown format'}; send a PNG, JPEG or WebP file"
                )
            opened.load()
            mode = opened.mode
            image = ImageOps.exif_transpose(opened)
    except ServiceError:
        raise
    except UnidentifiedImageError:
        raise invalid_image("the image is not a PNG, JPEG or WebP file Pillow can open") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise invalid_image(f"the image cannot be decoded: {exc}") from None
    converted = to_eight_bit(image)
    if converted.mode == "RGBA":
        _check_alpha(np.asarray(converted.getchannel("A")))
    if mode in _EIGHT_BIT_MODES:
        return PreparedImage(data, fmt, mode, image.size, converted=False)
    buffer = io.BytesIO()
    converted.save(buffer, "PNG", compress_level=1)
    return PreparedImage(buffer.getvalue(), "PNG", mode, converted.size, converted=True)


def check_image(data: bytes, max_bytes: int) -> PreparedImage:
    """The worker's check of an image the front end already prepared: size, format and mode from the
    header, the file's own checksums where its format has them, no pixel decode.

    An image with alpha or of a mode a backend cannot read as it is (a direct caller's) is prepared in full:
    its alpha must be checked and its pixels converted, and only a decode can do either.
    """
    check_image_size(len(data), max_bytes)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            fmt, mode, size = opened.format or "", opened.mode, opened.size
            plain = (
                fmt in IMAGE_FORMATS
                and mode in _EIGHT_BIT_MODES
                and mode not in _ALPHA_MODES
                and "transparency" not in opened.info
            )
            if plain:
                opened.verify()
    except UnidentifiedImageError:
        raise invalid_image("the image is not a PNG, JPEG or WebP file Pillow can open") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise invalid_image(f"the image cannot be decoded: {exc}") from None
    if not plain:
        return prepare_image(data, max_bytes)
    return PreparedImage(data, fmt, mode, size, converted=False)


def to_eight_bit(image: Any) -> Any:
    """An 8-bit RGB or RGBA copy of any Pillow image, higher bit depths scaled down, never clipped."""
    from PIL import Image

    mode = image.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _scale_to_byte(np.asarray(image), mode)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _EIGHT_BIT_MODES or mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        return image.convert("RGBA" if has_alpha else "RGB")
    raise invalid_image(f"the image's pixel mode {mode!r} is not supported; send 8- or 16-bit RGB(A) or grey")


def _scale_to_byte(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of any depth -> uint8, keeping every level distinct where 8 bits allow."""
    data = values.astype(np.float64)
    if not np.isfinite(data).all():
        raise invalid_image("the image holds NaN or infinite pixel values")
    low, high = float(data.min()), float(data.max())
    if mode.startswith("I;16"):
        scaled = data / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = data * 255.0
    elif low >= 0.0 and high <= 255.0 and mode != "I":
        scaled = data
    elif low >= 0.0 and high <= 65535.0:
        # 32-bit integer images are how Pillow opens most 16-bit greyscale files.
        scaled = data / 257.0 if high > 255.0 else data
    else:
        scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _check_alpha(alpha: np.ndarray) -> None:
    highest = int(alpha.max())
    if highest <= ALPHA_FOREGROUND:
        raise invalid_image(
            f"no pixel is opaque enough: TRELLIS keeps alpha > {ALPHA_FOREGROUND} and the most opaque pixel "
            f"here has alpha {highest}"
        )
