"""Shared fixtures: a factory for realistic random splats and the real PLY from shared/data."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ply_io import float_dtype
from diagnostics.splat import Splat

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"
HAMBURGER_PLY = REAL_DATA / "hamburger.ply"

# Typical of real outputs: hamburger.ply has opacity logit mean 0.68 / std 2.78, log-scales near -5.5.
REAL_OPACITY_MEAN = 0.68
REAL_OPACITY_STD = 2.78


def build_splat(
    n: int,
    seed: int = 0,
    *,
    opacity_mean: float = REAL_OPACITY_MEAN,
    opacity_std: float = REAL_OPACITY_STD,
    normals: bool = True,
    sh_rest: int = 0,
) -> Splat:
    """A random splat with the statistics of a real TRELLIS-like output (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    positions = rng.normal(0.0, 0.18, size=(n, 3))
    for i, axis in enumerate("xyz"):
        columns[axis] = positions[:, i]
    for i in range(3):
        columns[f"f_dc_{i}"] = rng.normal(0.0, 0.9, size=n)
    for i in range(sh_rest):
        columns[f"f_rest_{i}"] = rng.normal(0.0, 0.05, size=n)
    columns["opacity"] = rng.normal(opacity_mean, opacity_std, size=n)
    for i in range(3):
        columns[f"scale_{i}"] = rng.normal(-5.6, 0.6, size=n)
    rotations = rng.normal(0.0, 0.3, size=(n, 4)) + np.array([1.0, 0.0, 0.0, 0.0])
    for i in range(4):
        columns[f"rot_{i}"] = rotations[:, i]
    splat = Splat.from_columns(columns)
    if normals:
        return splat
    names = tuple(name for name in splat.names if name not in ("nx", "ny", "nz"))
    packed = np.empty(n, dtype=float_dtype(names))
    for name in names:
        packed[name] = splat[name]
    return Splat(packed)


@pytest.fixture(scope="session")
def make_splat() -> Callable[..., Splat]:
    """``make_splat(n, seed, opacity_mean=..., opacity_std=..., normals=True, sh_rest=0) -> Splat``."""
    return build_splat


@pytest.fixture(scope="session")
def real_ply_path() -> Path:
    """hamburger.ply from shared/data/real (52,709 gaussians, no normals); skips when absent."""
    if not HAMBURGER_PLY.is_file():
        pytest.skip(f"real data not present: {HAMBURGER_PLY}")
    return HAMBURGER_PLY


@pytest.fixture(scope="session")
def real_ply_bytes(real_ply_path: Path) -> bytes:
    return real_ply_path.read_bytes()


def count_python_calls(function: Callable[[], object]) -> int:
    """How many Python-level function calls ``function()`` makes: work per element shows up here."""
    calls = 0

    def profiler(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        function()
    finally:
        sys.setprofile(previous)
    return calls


@pytest.fixture(scope="session")
def python_calls() -> Callable[[Callable[[], object]], int]:
    """``python_calls(fn) -> int``: Python function calls made by ``fn()`` (a complexity measure)."""
    return count_python_calls
