"""Prompt parsing: text versus base64 image, and image checks, with typed errors."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from generation.errors import InvalidRequest, ServiceError

IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# A text prompt is a sentence; a base64 image is at least a few hundred characters without spaces.
_MIN_B64_CHARS = 64
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/\r\n]+={0,2}$")


class ImageTooLarge(ServiceError):
    status = 413
    code = "image_too_large"


@dataclass(frozen=True)
class ParsedPrompt:
    """Exactly one of ``text`` or ``image`` (raw file bytes) is set."""

    text: str | None = None
    image: bytes | None = None
    image_format: str | None = None

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image"


def check_text(text: str, max_chars: int) -> str:
    stripped = text.strip()
    if not stripped:
        raise InvalidRequest("the prompt is empty", code="empty_prompt")
    if len(stripped) > max_chars:
        raise InvalidRequest(
            f"the text prompt has {len(stripped)} characters; the limit is {max_chars}",
            code="prompt_too_long",
        )
    return stripped


def check_image(data: bytes, max_mb: float) -> str:
    """Return the image format (PNG/JPEG/WEBP) or raise a typed error."""
    if len(data) > max_mb * 1024 * 1024:
        raise ImageTooLarge(f"the image is {len(data) / 1048576:.1f} MB; the limit is {max_mb:g} MB")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise InvalidRequest(
            "the image is not a PNG, JPEG or WebP file Pillow can open", code="invalid_image"
        )
    return fmt


def sniff_image_format(data: bytes) -> str | None:
    """The Pillow format name when ``data`` is a PNG/JPEG/WebP image that opens and verifies."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.verify()
    except Exception:  # Pillow raises many types for bad files; any of them means "not an image"
        return None
    return fmt if fmt in IMAGE_FORMATS else None


def decode_b64(value: str) -> bytes | None:
    """Strict base64 (an optional data-URL prefix allowed); None when it is not base64."""
    body = _DATA_URL.sub("", value.strip(), count=1)
    if not _B64_CHARS.match(body):
        return None
    try:
        return base64.b64decode(body.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_image_b64(value: str, max_mb: float) -> ParsedPrompt:
    """A field that must hold a base64 image (the worker's ``image_b64``)."""
    data = decode_b64(value)
    if data is None:
        raise InvalidRequest("image_b64 is not valid base64", code="invalid_image")
    return ParsedPrompt(image=data, image_format=check_image(data, max_mb))


def classify_prompt(value: str, *, max_chars: int, max_image_mb: float) -> ParsedPrompt:
    """The 404 miner's single ``prompt`` field: a base64 image when it decodes to one, else text."""
    stripped = value.strip()
    if len(stripped) >= _MIN_B64_CHARS and " " not in stripped:
        data = decode_b64(stripped)
        if data is not None:
            fmt = sniff_image_format(data)
            if fmt is not None:
                return ParsedPrompt(image=data, image_format=check_image(data, max_image_mb))
            if len(stripped) > max_chars:
                raise InvalidRequest(
                    "the prompt looks like base64 but is not a PNG, JPEG or WebP image", code="invalid_image"
                )
    return ParsedPrompt(text=check_text(value, max_chars))
