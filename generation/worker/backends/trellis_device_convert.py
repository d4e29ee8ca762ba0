"""TRELLIS Gaussian -> PLY rows in torch, on the decoder's own device, with one host copy of the float32 rows.

The same numbers as ``trellis_convert.gaussian_to_splat`` (numpy, on the host): the arithmetic runs in float64
on the device, in the same order, and only the final float32 rows cross to the host. On a GPU this replaces five
device-to-host copies and the host's float64 passes over 400K gaussians with elementwise kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from diagnostics.ply_io import float_dtype
from diagnostics.splat import STANDARD_COLUMNS, Splat
from generation.worker.backends.trellis_convert import (
    _QUATERNION_EPS,
    SAVE_PLY_TRANSFORM,
    GaussianParams,
    _matrix_to_quaternion,
    _rotation_matrix,
)


def gaussian_rows(
    torch: Any,
    xyz: Any,
    features_dc: Any,
    opacity: Any,
    scaling: Any,
    rotation: Any,
    params: GaussianParams,
    transform: ArrayLike | None = SAVE_PLY_TRANSFORM,
) -> Any:
    """Raw Gaussian tensors -> an (N, 17) float32 tensor in ``STANDARD_COLUMNS`` order, on their device."""
    f64 = torch.float64
    raw_xyz = _checked(xyz, "xyz", (3,))
    count, device = raw_xyz.shape[0], raw_xyz.device
    raw_dc = _checked(features_dc, "features_dc", (1, 3), count)
    raw_opacity = _checked(opacity, "opacity", (1,), count)
    raw_scaling = _checked(scaling, "scaling", (3,), count)
    raw_rotation = _checked(rotation, "rotation", (4,), count)

    def constant(values: Any) -> Any:
        return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=f64, device=device)

    aabb = constant(params.aabb)
    positions = raw_xyz.to(f64) * aabb[3:] + aabb[:3]
    quaternions = raw_rotation.to(f64) + constant(params.rotation_bias)
    if transform is not None:
        matrix = _rotation_matrix(transform)
        positions = positions @ constant(matrix.T)
        quaternions = _rotate(torch, quaternions, constant(_matrix_to_quaternion(matrix)))

    out = torch.zeros((count, len(STANDARD_COLUMNS)), dtype=torch.float32, device=device)
    out[:, 0:3] = positions
    out[:, 6:9] = raw_dc[:, 0, :].to(f64)
    out[:, 9] = _opacity_logits(torch, raw_opacity[:, 0].to(f64), params)
    out[:, 10:13] = _log_scales(torch, raw_scaling.to(f64), params)
    out[:, 13:17] = quaternions
    return out


def rows_to_splat(rows: Any) -> Splat:
    """The one host copy: float32 rows -> a Splat viewing them."""
    host = rows.detach().cpu().numpy()
    count = host.shape[0]
    return Splat(np.ascontiguousarray(host).view(float_dtype(STANDARD_COLUMNS)).reshape(count))


def gaussian_to_splat_on_device(torch: Any, gaussian: Any, params: GaussianParams) -> Splat:
    """A TRELLIS ``Gaussian`` -> Splat, converted where its tensors live."""
    rows = gaussian_rows(
        torch,
        gaussian._xyz.detach(),
        gaussian._features_dc.detach(),
        gaussian._opacity.detach(),
        gaussian._scaling.detach(),
        gaussian._rotation.detach(),
        params,
    )
    return rows_to_splat(rows)


def _checked(tensor: Any, name: str, tail: tuple[int, ...], count: int | None = None) -> Any:
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(tail) or shape[1:] != tail or (count is not None and shape[0] != count):
        expected = ("N" if count is None else str(count), *map(str, tail))
        raise ValueError(f"{name} has shape {shape}, expected ({', '.join(expected)})")
    return tensor


def _opacity_logits(torch: Any, raw: Any, params: GaussianParams) -> Any:
    # inverse_sigmoid(sigmoid(z)) exactly as the host version computes it, saturation to +-inf included.
    z = raw + params.opacity_bias
    alpha = 1.0 / (1.0 + torch.exp(-z))
    return torch.log(alpha / (1.0 - alpha))


def _log_scales(torch: Any, raw: Any, params: GaussianParams) -> Any:
    z = raw + params.scale_bias
    if params.scaling_activation == "softplus":
        scales = torch.logaddexp(torch.zeros_like(z), z)
    elif params.scaling_activation == "exp":
        scales = torch.exp(z)
    else:
        raise ValueError(f"unknown scaling activation {params.scaling_activation!r}")
    return torch.log(torch.sqrt(scales * scales + params.min_kernel_size**2))


def _normalise(torch: Any, quaternions: Any) -> Any:
    norms = torch.linalg.vector_norm(quaternions, dim=1, keepdim=True)
    unit = quaternions / torch.clamp(norms, min=_QUATERNION_EPS)
    identity = torch.zeros_like(unit)
    identity[:, 0] = 1.0
    return torch.where(norms < _QUATERNION_EPS, identity, unit)


def _rotate(torch: Any, quaternions: Any, rotation: Any) -> Any:
    """``rotation * normalise(q)`` per row, then unit length with the largest-magnitude component positive."""
    unit = _normalise(torch, quaternions)
    w0, x0, y0, z0 = rotation.unbind()
    w, x, y, z = unit.unbind(dim=1)
    product = torch.stack(
        (
            w0 * w - x0 * x - y0 * y - z0 * z,
            w0 * x + x0 * w + y0 * z - z0 * y,
            w0 * y - x0 * z + y0 * w + z0 * x,
            w0 * z + x0 * y - y0 * x + z0 * w,
        ),
        dim=1,
    )
    product = _normalise(torch, product)
    largest = torch.argmax(product.abs(), dim=1, keepdim=True)
    signs = torch.where(torch.gather(product, 1, largest) < 0, -1.0, 1.0).to(product.dtype)
    return product * signs
