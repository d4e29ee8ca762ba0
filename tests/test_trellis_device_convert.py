"""Gaussian -> PLY rows in torch (the optimised mode's device-side conversion) against the numpy conversion."""

from __future__ import annotations

import numpy as np
import pytest
from test_trellis_convert import raw_gaussian

from generation.worker.backends.trellis_convert import GaussianParams, gaussian_to_splat
from generation.worker.backends.trellis_device_convert import gaussian_rows, rows_to_splat

torch = pytest.importorskip("torch")


def both(
    raw: dict[str, np.ndarray], params: GaussianParams, **kwargs: object
) -> tuple[np.ndarray, np.ndarray]:
    host = gaussian_to_splat(**raw, params=params, **kwargs)  # type: ignore[arg-type]
    tensors = {name: torch.from_numpy(values) for name, values in raw.items()}
    device = rows_to_splat(gaussian_rows(torch, **tensors, params=params, **kwargs))
    assert device.names == host.names and len(device) == len(host)
    as_rows = [np.stack([s[name] for name in s.names], axis=1) for s in (host, device)]
    return as_rows[0], as_rows[1]


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_rows_equal_the_numpy_conversion_within_float32_rounding(activation: str) -> None:
    """Both compute in float64 and round once to float32: at most one float32 step apart, saturation included."""
    raw = raw_gaussian(np.random.default_rng(3))
    raw["opacity"][:4, 0] = [200.0, -900.0, 40.0, -40.0]  # +-inf logits, and the edge of float64's sigmoid
    raw["rotation"][:2] = 0.0  # degenerate quaternions become the transform itself
    raw["scaling"][:2, 0] = [90.0, -90.0]
    params = GaussianParams.from_config(scaling_activation=activation)  # type: ignore[arg-type]
    host, device = both(raw, params)
    assert np.array_equal(np.isinf(host), np.isinf(device)) and np.isinf(host[:2, 9]).all()
    finite = np.isfinite(host)
    np.testing.assert_array_max_ulp(host[finite], device[finite], maxulp=1)


def test_without_transform_and_with_another_box() -> None:
    raw = raw_gaussian(np.random.default_rng(4), 500)
    params = GaussianParams.from_config(aabb=(-1.0, -2.0, 0.5, 2.0, 4.0, 1.0))
    host, device = both(raw, params, transform=None)
    np.testing.assert_array_max_ulp(host, device, maxulp=1)


def test_shapes_are_checked_with_the_same_messages() -> None:
    raw = {name: torch.from_numpy(v) for name, v in raw_gaussian(np.random.default_rng(5), 10).items()}
    raw["opacity"] = raw["opacity"][:9]
    with pytest.raises(ValueError, match=r"opacity has shape \(9, 1\), expected \(10, 1\)"):
        gaussian_rows(torch, **raw, params=GaussianParams.from_config())
