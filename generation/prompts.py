"""Prompt parsing: text versus base64 image, with typed errors.

The rule (README, "Telling an image from text"): a prompt is an image when it carries a
``data:image/...;base64,`` prefix, or when, line breaks aside, it is at least ``MIN_IMAGE_B64_CHARS``
characters of the base64 alphabet (standard or URL-safe, padding optional) with no space in it. Such a
prompt must decode to a PNG, JPEG or WebP image, else it is refused with ``invalid_image``: it is never
served as text. Everything else is text.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from generation.contract import GenerateJSON
from generation.errors import InvalidRequest
from generation.image_input import PreparedImage, check_image_size, describe_mb, invalid_image, prepare_image

# The smallest PNG is 67 bytes (92 base64 characters); no real sentence is 64 letters without a space.
MIN_IMAGE_B64_CHARS = 64
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.IGNORECASE)
_B64_BODY = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
_LINE_BREAKS = re.compile(r"[\r\n]+")

# How an image's bytes are checked: in full by the front end (prepare_image), cheaply by the worker.
ImageCheck = Callable[[bytes, int], PreparedImage]


@dataclass(frozen=True)
class ParsedPrompt:
    """Exactly one of ``text`` or ``image`` (file bytes, already 8-bit) is set."""

    text: str | None = None
    image: bytes | None = None
    image_format: str | None = None

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image"

    def image_b64(self) -> str:
        return base64.b64encode(self.image or b"").decode("ascii")


def check_text(text: str, max_chars: int) -> str:
    stripped = text.strip()
    if not stripped:
        raise InvalidRequest("the prompt is empty", code="empty_prompt")
    if len(stripped) > max_chars:
        raise InvalidRequest(
            f"the text prompt has {len(stripped):,} characters; the limit is {max_chars:,}",
            code="prompt_too_long",
        )
    return stripped


def mb_to_bytes(mb: float) -> int:
    return int(mb * 1024 * 1024)


def image_prompt(data: bytes, max_image_mb: float) -> ParsedPrompt:
    """Raw image file bytes (an upload)."""
    prepared = prepare_image(data, mb_to_bytes(max_image_mb))
    return ParsedPrompt(image=prepared.data, image_format=prepared.format)


def base64_body(value: str) -> str | None:
    """The base64 payload when ``value`` looks like a base64 image by the rule above, else None."""
    stripped = value.strip()
    body, prefixed = _DATA_URL.subn("", stripped, count=1)
    if " " in body or "\t" in body:
        return None
    body = _LINE_BREAKS.sub("", body)
    if not _B64_BODY.match(body):
        return None
    if not prefixed and len(body) < MIN_IMAGE_B64_CHARS:
        return None
    return body


def decode_b64(body: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not; None when it does not decode."""
    if ("-" in body or "_" in body) and ("+" in body or "/" in body):
        return None  # two alphabets mixed: not something any encoder writes
    unpadded = body.rstrip("=")
    if len(unpadded) % 4 == 1:
        return None
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        if "-" in padded or "_" in padded:
            return base64.b64decode(padded.translate(str.maketrans("-_", "+/")), validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_image_body(
    body: str, max_image_bytes: int, what: str, check: ImageCheck = prepare_image
) -> ParsedPrompt:
    # Refuse an oversized image before decoding it: base64 holds 3 bytes per 4 characters.
    check_image_size(len(body.rstrip("=")) * 3 // 4, max_image_bytes)
    data = decode_b64(body)
    if data is None:
        raise invalid_image(
            f"{what} looks like base64 but does not decode ({describe_mb(len(body))} of text)"
        )
    prepared = check(data, max_image_bytes)
    return ParsedPrompt(image=prepared.data, image_format=prepared.format)


def decode_image_b64(value: str, max_image_mb: float, check: ImageCheck = prepare_image) -> ParsedPrompt:
    """A field that must hold a base64 image (``image_b64``)."""
    stripped = value.strip()
    body = _LINE_BREAKS.sub("", _DATA_URL.sub("", stripped, count=1))
    if not body or not _B64_BODY.match(body):
        raise invalid_image("image_b64 is not base64")
    return _decode_image_body(body, mb_to_bytes(max_image_mb), "image_b64", check)


def classify_prompt(
    value: str, *, max_chars: int, max_image_mb: float, check: ImageCheck = prepare_image
) -> ParsedPrompt:
    """A ``prompt`` field: a base64 image when it looks like one (and then it must be one), else text."""
    body = base64_body(value)
    if body is None:
        return ParsedPrompt(text=check_text(value, max_chars))
    return _decode_image_body(body, mb_to_bytes(max_image_mb), "the prompt", check)


def json_prompt(
    body: GenerateJSON, *, max_chars: int, max_image_mb: float, check: ImageCheck = prepare_image
) -> ParsedPrompt:
    """The prompt of a JSON body: exactly one of ``prompt`` (text or base64 image) or ``image_b64``."""
    if (body.prompt is None) == (body.image_b64 is None):
        raise InvalidRequest("give exactly one of 'prompt' or 'image_b64'", code="invalid_prompt")
    if body.prompt is not None:
        return classify_prompt(body.prompt, max_chars=max_chars, max_image_mb=max_image_mb, check=check)
    return decode_image_b64(body.image_b64 or "", max_image_mb, check)
