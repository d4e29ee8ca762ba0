"""Activate a splat's stored values and move it into the validator's frame (largest extent 1.5).

The validator's loader takes sigmoid(opacity), exp(scale), normalised wxyz rotations and
0.5 + C0 * f_dc colours (not clipped before compositing). Its ``transform_gs_data`` then

- subtracts the mean of *all* coordinates, one scalar (``points - points.mean()``), not a per-axis centroid;
- scales positions and scales so that the largest bounding-box extent is 1.5;
- divides opacities by that scale factor and clips them to [0, 1].

``validator_quirks=True`` (the default) reproduces the first and last points so previews match what
validators see; ``False`` centres on the per-axis mean and leaves opacities alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diagnostics.splat import SH_C0, Splat

REFERENCE_EXTENT = 1.5
# Below this extent a splat is a point (one gaussian, or all at one place): it is not rescaled.
_DEGENERATE_EXTENT = 1e-9

_POSITION = ("x", "y", "z")
_SCALE = ("scale_0", "scale_1", "scale_2")
_ROTATION = ("rot_0", "rot_1", "rot_2", "rot_3")
_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_COVARIANCE_ENTRIES = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


@dataclass(frozen=True)
class PreparedSplat:
    """Activated gaussians in the render frame."""

    means: np.ndarray  # (3, N) float64: x, y, z rows
    covariances: np.ndarray  # (6, N) float64: xx, xy, xz, yy, yz, zz of R S S^T R^T
    colors: np.ndarray  # (N, 3) float32, unclipped
    opacities: np.ndarray  # (N,) float32 in [0, 1]

    def __len__(self) -> int:
        return self.means.shape[1]


def _columns(splat: Splat, names: tuple[str, ...]) -> np.ndarray:
    return np.stack([np.asarray(splat[n], dtype=np.float64) for n in names], axis=1)


def finite_mask(splat: Splat) -> np.ndarray:
    """Gaussians that can be drawn: every column finite, except opacity which may be +-inf (saturated)."""
    names = _POSITION + _SCALE + _ROTATION + _DC
    ok = np.ones(len(splat), dtype=bool)
    for name in names:
        ok &= np.isfinite(splat[name])
    ok &= ~np.isnan(splat["opacity"])
    return ok


def rotation_matrices(quaternions: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations from unnormalised wxyz quaternions; a zero quaternion gives the identity."""
    norm = np.linalg.norm(quaternions, axis=1, keepdims=True)
    q = quaternions / np.maximum(norm, 1e-12)
    w, x, y, z = q.T
    out = np.empty((len(q), 3, 3))
    out[:, 0, 0] = 1 - 2 * (y * y + z * z)
    out[:, 0, 1] = 2 * (x * y - w * z)
    out[:, 0, 2] = 2 * (x * z + w * y)
    out[:, 1, 0] = 2 * (x * y + w * z)
    out[:, 1, 1] = 1 - 2 * (x * x + z * z)
    out[:, 1, 2] = 2 * (y * z - w * x)
    out[:, 2, 0] = 2 * (x * z - w * y)
    out[:, 2, 1] = 2 * (y * z + w * x)
    out[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return out


def _normalisation(means: np.ndarray, extent: float, validator_quirks: bool) -> tuple[np.ndarray, float]:
    """The centre to subtract and the scale factor that brings the largest extent to ``extent``."""
    if len(means) == 0:
        return np.zeros(3), 1.0
    centre = np.full(3, means.mean()) if validator_quirks else means.mean(axis=0)
    largest = float(np.max(means.max(axis=0) - means.min(axis=0)))
    factor = extent / largest if largest > _DEGENERATE_EXTENT else 1.0
    return centre, factor


def prepare_splat(
    splat: Splat, *, extent: float = REFERENCE_EXTENT, validator_quirks: bool = True
) -> PreparedSplat:
    """Drop non-finite gaussians, activate the rest and normalise them as the validator does."""
    mask = finite_mask(splat)
    kept = splat if mask.all() else splat.select(mask)
    means = _columns(kept, _POSITION)
    centre, factor = _normalisation(means, extent, validator_quirks)
    # exp of a float64 log-scale overflows only past 709; such gaussians turn non-finite and are culled later.
    with np.errstate(over="ignore"):
        scales = np.exp(_columns(kept, _SCALE)) * factor
    factors = rotation_matrices(_columns(kept, _ROTATION)) * scales[:, None, :]
    covariances = np.stack(
        [np.einsum("nj,nj->n", factors[:, i, :], factors[:, k, :]) for i, k in _COVARIANCE_ENTRIES]
    )
    # tanh form of the sigmoid: exact at +-inf and free of overflow warnings.
    opacities = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(kept["opacity"], dtype=np.float64)))
    if validator_quirks:
        opacities = np.clip(opacities / factor, 0.0, 1.0)
    colors = (0.5 + SH_C0 * _columns(kept, _DC)).astype(np.float32)
    return PreparedSplat(
        means=np.ascontiguousarray(((means - centre) * factor).T),
        covariances=covariances,
        colors=colors,
        opacities=opacities.astype(np.float32),
    )
