"""Image prompts for tests, made here: photo-like PNGs of a chosen size and images in every Pillow mode."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo_like_png(side: int = 1024, seed: int = 0) -> bytes:
    """A photo-like RGBA PNG: gradients, a disc of another colour, sensor noise and a mostly opaque, grainy
    alpha channel (as a cut-out photo has); 3-4 MB at 1024x1024."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.8 - 0.5 * x * y], axis=-1) * 255
    disc = (x - 0.5) ** 2 + (y - 0.55) ** 2 < 0.09
    rgb[disc] = [200, 60, 40]
    rgb += rng.normal(0, 40, rgb.shape)
    alpha = rng.integers(215, 256, (side, side))[..., None]
    rgba = np.clip(np.concatenate([rgb, alpha], axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def padded_png(size: int, seed: int = 0) -> bytes:
    """A valid PNG of exactly ``size`` bytes: a small picture plus a private chunk Pillow skips."""
    base = photo_like_png(64, seed)
    overhead = 12  # length, type and CRC of the padding chunk
    fill = size - len(base) - overhead
    if fill < 0:
        raise ValueError(f"{size} bytes is smaller than the base picture ({len(base)})")
    iend = base.rindex(b"IEND") - 4
    payload = np.random.default_rng(seed).integers(0, 256, fill, dtype=np.uint8).tobytes()
    chunk = struct.pack(">I", fill) + b"prVt" + payload + struct.pack(">I", zlib.crc32(b"prVt" + payload))
    out = base[:iend] + chunk + base[iend:]
    assert len(out) == size
    return out


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def raw_png(pixels: np.ndarray, colour_type: int, bit_depth: int) -> bytes:
    """A PNG written by hand (for layouts Pillow cannot save, e.g. 16-bit RGB): filter 0 on every row."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    height, width = pixels.shape[:2]
    big_endian = pixels.astype(">u2" if bit_depth == 16 else "u1")
    rows = b"".join(b"\0" + big_endian[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
