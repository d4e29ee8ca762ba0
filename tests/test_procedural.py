"""The procedural CPU stand-in: deterministic, TRELLIS-like statistics, always valid for validators."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_worker import validator_accepts

from generation.errors import InvalidRequest
from generation.settings import WorkerSettings
from generation.worker.backends import GenerationParams, GenerationRequest, create_backend
from generation.worker.backends.procedural import ProceduralBackend

PROMPTS = [
    line.strip()
    for line in """
a red ceramic teapot with a bamboo handle
a wooden rocking chair
a medieval iron sword with a leather grip
a stack of three old books
a pink frosted donut with sprinkles
a purple mushroom with white spots
a toy robot made of tin
a snowman wearing a red scarf
zxqv unknown words only
""".strip().splitlines()
]


@pytest.fixture(scope="module")
def backend() -> ProceduralBackend:
    b = create_backend(WorkerSettings(procedural_gaussians=30000))
    assert isinstance(b, ProceduralBackend)
    return b


def image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    img = Image.new(mode, (80, 60), (255, 255, 255, 0) if mode == "RGBA" else "white")
    img.paste(Image.new(mode, (40, 30), (200, 40, 40, 255) if mode == "RGBA" else (200, 40, 40)), (20, 15))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_text_prompts_look_like_trellis_output(backend: ProceduralBackend, prompt: str) -> None:
    splat = backend.generate(GenerationRequest(prompt=prompt, seed=11))
    assert len(splat) == 30000
    validator_accepts(splat)
    opacity = splat["opacity"].astype(np.float64)
    assert 3.0 <= opacity.std() <= 9.0
    pos = splat.positions
    assert pos.min() >= -0.5 and pos.max() <= 0.5
    log_scale = splat.stack(("scale_0", "scale_1", "scale_2"))
    assert -9.0 < log_scale.mean() < -3.0
    rot = splat.stack(("rot_0", "rot_1", "rot_2", "rot_3"))
    assert np.abs(rot[:, 1:]).mean() > 0.1  # genuinely rotated, not identity


def test_colour_words_colour_the_object(backend: ProceduralBackend) -> None:
    red = backend.generate(GenerationRequest(prompt="a red ball")).colors.mean(axis=0)
    blue = backend.generate(GenerationRequest(prompt="a blue ball")).colors.mean(axis=0)
    assert red[0] > red[2] + 0.3
    assert blue[2] > blue[0] + 0.3


def test_deterministic_per_request(backend: ProceduralBackend) -> None:
    def ply(**kw: object) -> bytes:
        return backend.generate(GenerationRequest(**kw)).to_ply_bytes()  # type: ignore[arg-type]

    assert ply(prompt="a cup", seed=5) == ply(prompt="a cup", seed=5)
    assert ply(prompt="a cup", seed=5) != ply(prompt="a cup", seed=6)
    assert ply(prompt="a cup", seed=5) != ply(prompt="a mug", seed=5)
    img = image_bytes("PNG")
    assert ply(image=img, seed=1) == ply(image=img, seed=1)


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("PNG", "RGBA")])
def test_images_become_a_relief_with_the_background_keyed_out(
    backend: ProceduralBackend, fmt: str, mode: str
) -> None:
    splat = backend.generate(GenerationRequest(image=image_bytes(fmt, mode)))
    validator_accepts(splat)
    colours = splat.colors
    # The red square, not the white background, is what was lifted.
    assert colours[:, 0].mean() > colours[:, 1].mean() + 0.3
    assert np.ptp(splat["z"]) > 0.01  # a relief, not a flat card


def test_default_count_is_400k_and_params_override() -> None:
    assert WorkerSettings().procedural_gaussians == 400_000
    b = ProceduralBackend(WorkerSettings(procedural_gaussians=10000))
    assert (
        len(b.generate(GenerationRequest(prompt="a cup", params=GenerationParams(num_gaussians=7000))))
        == 7000
    )


def test_undecodable_image_is_a_typed_error(backend: ProceduralBackend) -> None:
    with pytest.raises(InvalidRequest) as info:
        backend.generate(GenerationRequest(image=b"\x89PNG\r\n\x1a\n broken"))
    assert info.value.code == "invalid_image"


def test_leak_injection_keeps_memory_alive() -> None:
    b = ProceduralBackend(WorkerSettings(procedural_gaussians=8000, procedural_leak_mb=2))
    for _ in range(3):
        b.generate(GenerationRequest(prompt="a cup"))
    b.cleanup()
    assert sum(len(block) for block in b._leaked) == 3 * 2 * 1024 * 1024
