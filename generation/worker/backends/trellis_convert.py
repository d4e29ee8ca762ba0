"""TRELLIS Gaussian -> Splat, on numpy arrays: the numbers TRELLIS's ``Gaussian.save_ply`` writes, vectorised.

The inputs are the raw decoder outputs (``_xyz``, ``_features_dc``, ``_opacity``, ``_scaling``,
``_rotation``) and the model's own biases, so the conversion needs neither torch nor a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from diagnostics.ply_io import float_dtype
from diagnostics.splat import STANDARD_COLUMNS, Splat

# save_ply's default transform, (x, y, z) -> (x, -z, y): TRELLIS's z-up frame into the 3DGS PLY convention,
# where up is -y (the COLMAP camera frame). Miners' TRELLIS outputs all carry it.
SAVE_PLY_TRANSFORM = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

ScalingActivation = Literal["exp", "softplus"]

# Below this norm a quaternion has no direction; utils3d divides by this floor, which yields the identity.
_QUATERNION_EPS = 1e-12


@dataclass(frozen=True)
class GaussianParams:
    """A TRELLIS ``Gaussian``'s constants: what is added to the raw tensors before activation."""

    aabb: tuple[float, float, float, float, float, float]
    opacity_bias: float
    scale_bias: float
    rotation_bias: tuple[float, float, float, float]
    min_kernel_size: float
    scaling_activation: ScalingActivation

    @classmethod
    def from_config(
        cls,
        *,
        aabb: tuple[float, float, float, float, float, float] = (-0.5, -0.5, -0.5, 1.0, 1.0, 1.0),
        scaling_bias: float = 4e-3,
        opacity_bias: float = 0.1,
        min_kernel_size: float = 9e-4,
        scaling_activation: ScalingActivation = "softplus",
    ) -> GaussianParams:
        """Biases derived from a decoder's ``representation_config`` (defaults: TRELLIS's Gaussian decoder)."""
        if scaling_activation == "softplus":
            scale_bias = scaling_bias + math.log(-math.expm1(-scaling_bias))
        elif scaling_activation == "exp":
            scale_bias = math.log(scaling_bias)
        else:
            raise ValueError(f"unknown scaling activation {scaling_activation!r}")
        return cls(
            aabb=aabb,
            opacity_bias=math.log(opacity_bias / (1.0 - opacity_bias)),
            scale_bias=scale_bias,
            rotation_bias=(1.0, 0.0, 0.0, 0.0),
            min_kernel_size=min_kernel_size,
            scaling_activation=scaling_activation,
        )


def gaussian_to_splat(
    xyz: ArrayLike,
    features_dc: ArrayLike,
    opacity: ArrayLike,
    scaling: ArrayLike,
    rotation: ArrayLike,
    params: GaussianParams,
    transform: ArrayLike | None = SAVE_PLY_TRANSFORM,
) -> Splat:
    """Raw TRELLIS Gaussian arrays -> a Splat in ``STANDARD_COLUMNS`` order, as ``save_ply`` would write it.

    Shapes: ``xyz`` (N, 3), ``features_dc`` (N, 1, 3), ``opacity`` (N, 1), ``scaling`` (N, 3), ``rotation`` (N, 4).
    """
    raw_xyz = _as_float64(xyz, "xyz", (3,))
    count = raw_xyz.shape[0]
    raw_dc = _as_float64(features_dc, "features_dc", (1, 3), count)
    raw_opacity = _as_float64(opacity, "opacity", (1,), count)
    raw_scaling = _as_float64(scaling, "scaling", (3,), count)
    raw_rotation = _as_float64(rotation, "rotation", (4,), count)

    aabb = np.asarray(params.aabb, dtype=np.float64)
    positions = raw_xyz * aabb[3:] + aabb[:3]
    # Without a transform save_ply writes the biased quaternion as it is, unnormalised.
    quaternions = raw_rotation + np.asarray(params.rotation_bias, dtype=np.float64)
    if transform is not None:
        matrix = _rotation_matrix(transform)
        positions = positions @ matrix.T
        quaternions = _rotate_quaternions(quaternions, _matrix_to_quaternion(matrix))

    out = np.zeros((count, len(STANDARD_COLUMNS)), dtype=np.float32)
    out[:, 0:3] = positions
    # 3:6 are the normals, zero as in save_ply.
    out[:, 6:9] = raw_dc[:, 0, :]
    out[:, 9] = opacity_logits(raw_opacity[:, 0], params)
    out[:, 10:13] = log_scales(raw_scaling, params)
    out[:, 13:17] = quaternions
    return Splat(out.view(float_dtype(STANDARD_COLUMNS)).reshape(count))


def opacity_logits(raw: np.ndarray, params: GaussianParams) -> np.ndarray:
    """``inverse_sigmoid(sigmoid(raw + bias))`` in float64, where the round trip loses nothing that float32 keeps."""
    z = np.asarray(raw, dtype=np.float64) + params.opacity_bias
    # Saturation beyond float64's range gives +-inf, the same answer TRELLIS writes for saturated alpha.
    with np.errstate(over="ignore", divide="ignore"):
        alpha = 1.0 / (1.0 + np.exp(-z))
        return np.log(alpha / (1.0 - alpha))


def log_scales(raw: np.ndarray, params: GaussianParams) -> np.ndarray:
    """``log(sqrt(activation(raw + bias)^2 + min_kernel_size^2))``: the 3D filter widens every scale."""
    z = np.asarray(raw, dtype=np.float64) + params.scale_bias
    with np.errstate(over="ignore"):
        if params.scaling_activation == "softplus":
            scales = np.logaddexp(0.0, z)
        elif params.scaling_activation == "exp":
            scales = np.exp(z)
        else:
            raise ValueError(f"unknown scaling activation {params.scaling_activation!r}")
        return np.log(np.sqrt(scales * scales + params.min_kernel_size**2))


def _as_float64(values: ArrayLike, name: str, tail: tuple[int, ...], count: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 + len(tail) or array.shape[1:] != tail or (count is not None and len(array) != count):
        expected = ("N" if count is None else str(count), *map(str, tail))
        raise ValueError(f"{name} has shape {array.shape}, expected ({', '.join(expected)})")
    return array


def _rotation_matrix(transform: ArrayLike) -> np.ndarray:
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (3, 3):
        raise ValueError(f"transform has shape {matrix.shape}, expected (3, 3)")
    # A reflection or a scale has no quaternion: save_ply would write garbage rotations for one.
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-9) or np.linalg.det(matrix) < 0:
        raise ValueError("transform must be a rotation (orthonormal, determinant +1)")
    return matrix


def _matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """One rotation matrix -> unit quaternion (w, x, y, z), from its largest component for stability."""
    trace = np.trace(matrix)
    diagonal = np.diagonal(matrix)
    magnitudes = 0.5 * np.sqrt(np.maximum(0.0, 1.0 + np.array([trace, *(2 * diagonal - trace)])))
    largest = int(np.argmax(magnitudes))
    m = matrix
    # Each off-diagonal pair gives 4 * (product of two components); divide by the largest one.
    products = {
        (0, 1): m[2, 1] - m[1, 2],
        (0, 2): m[0, 2] - m[2, 0],
        (0, 3): m[1, 0] - m[0, 1],
        (1, 2): m[0, 1] + m[1, 0],
        (1, 3): m[0, 2] + m[2, 0],
        (2, 3): m[1, 2] + m[2, 1],
    }
    q = np.empty(4)
    q[largest] = magnitudes[largest]
    for other in range(4):
        if other != largest:
            q[other] = products[tuple(sorted((largest, other)))] / (4.0 * magnitudes[largest])
    return q / np.linalg.norm(q)


def _rotate_quaternions(quaternions: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``rotation * normalise(q)`` for each row: the quaternion of ``transform @ R(q)``, as save_ply computes it."""
    unit = _normalise(quaternions)
    w0, x0, y0, z0 = rotation
    w, x, y, z = unit[:, 0], unit[:, 1], unit[:, 2], unit[:, 3]
    product = np.stack(
        (
            w0 * w - x0 * x - y0 * y - z0 * z,
            w0 * x + x0 * w + y0 * z - z0 * y,
            w0 * y - x0 * z + y0 * w + z0 * x,
            w0 * z + x0 * y - y0 * x + z0 * w,
        ),
        axis=1,
    )
    return _canonical_unit(product)


def _normalise(quaternions: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(quaternions, axis=1, keepdims=True)
    unit = quaternions / np.maximum(norms, _QUATERNION_EPS)
    degenerate = norms[:, 0] < _QUATERNION_EPS
    unit[degenerate] = (1.0, 0.0, 0.0, 0.0)
    return unit


def _canonical_unit(quaternions: np.ndarray) -> np.ndarray:
    """Unit length with the largest-magnitude component positive: the sign utils3d's matrix_to_quaternion picks."""
    unit = _normalise(quaternions)
    largest = np.argmax(np.abs(unit), axis=1)
    signs = np.where(unit[np.arange(len(unit)), largest] < 0, -1.0, 1.0)
    return unit * signs[:, None]
