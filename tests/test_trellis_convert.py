"""TRELLIS Gaussian -> Splat conversion against a float64 reference of what ``Gaussian.save_ply`` computes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diagnostics.splat import STANDARD_COLUMNS, Splat
from generation.worker.backends.trellis_convert import SAVE_PLY_TRANSFORM, GaussianParams, gaussian_to_splat

COUNT = 4000


def raw_gaussian(rng: np.random.Generator, count: int = COUNT) -> dict[str, np.ndarray]:
    """Random raw decoder outputs in the ranges TRELLIS produces, plus wide rotations to hit every branch."""
    rotation = rng.normal(0.0, 0.3, (count, 4))
    rotation[: count // 2] = rng.normal(0.0, 2.0, (count // 2, 4))
    return {
        "xyz": rng.uniform(0.0, 1.0, (count, 3)).astype(np.float32),
        "features_dc": rng.normal(0.0, 1.0, (count, 1, 3)).astype(np.float32),
        "opacity": rng.normal(0.0, 4.0, (count, 1)).astype(np.float32),
        "scaling": rng.normal(-3.0, 2.0, (count, 3)).astype(np.float32),
        "rotation": rotation.astype(np.float32),
    }


# -- the reference: TRELLIS's formulas, written out plainly in float64 ---------------------------------------


def reference_quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
        ],
        axis=1,
    )


def reference_matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Bar-Itzhack: the eigenvector of the largest eigenvalue, then the largest component made positive."""
    k = np.empty((len(m), 4, 4))
    k[:, 0, 0] = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    k[:, 1, 1] = m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2]
    k[:, 2, 2] = -m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2]
    k[:, 3, 3] = -m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]
    k[:, 0, 1] = k[:, 1, 0] = m[:, 2, 1] - m[:, 1, 2]
    k[:, 0, 2] = k[:, 2, 0] = m[:, 0, 2] - m[:, 2, 0]
    k[:, 0, 3] = k[:, 3, 0] = m[:, 1, 0] - m[:, 0, 1]
    k[:, 1, 2] = k[:, 2, 1] = m[:, 0, 1] + m[:, 1, 0]
    k[:, 1, 3] = k[:, 3, 1] = m[:, 0, 2] + m[:, 2, 0]
    k[:, 2, 3] = k[:, 3, 2] = m[:, 1, 2] + m[:, 2, 1]
    _, vectors = np.linalg.eigh(k)
    q = vectors[:, :, -1]
    largest = np.argmax(np.abs(q), axis=1)
    return q * np.sign(q[np.arange(len(q)), largest])[:, None]


def reference_save_ply(raw: dict[str, np.ndarray], params: GaussianParams) -> dict[str, np.ndarray]:
    aabb = np.asarray(params.aabb)
    xyz = raw["xyz"].astype(np.float64) * aabb[3:] + aabb[:3]
    opacity_z = raw["opacity"][:, 0].astype(np.float64) + params.opacity_bias
    alpha = 1.0 / (1.0 + np.exp(-opacity_z))
    scale_z = raw["scaling"].astype(np.float64) + params.scale_bias
    scales = np.log1p(np.exp(scale_z)) if params.scaling_activation == "softplus" else np.exp(scale_z)
    scales = np.sqrt(scales**2 + params.min_kernel_size**2)
    rotation = raw["rotation"].astype(np.float64) + np.asarray(params.rotation_bias)
    rotated = np.einsum("ij,njk->nik", SAVE_PLY_TRANSFORM, reference_quaternion_to_matrix(rotation))
    quaternion = reference_matrix_to_quaternion(rotated)
    positions = xyz @ SAVE_PLY_TRANSFORM.T
    columns = {name: positions[:, i] for i, name in enumerate("xyz")}
    columns |= {f"f_dc_{i}": raw["features_dc"][:, 0, i].astype(np.float64) for i in range(3)}
    columns["opacity"] = np.log(alpha / (1.0 - alpha))
    columns |= {f"scale_{i}": np.log(scales[:, i]) for i in range(3)}
    columns |= {f"rot_{i}": quaternion[:, i] for i in range(4)}
    return columns


def convert(raw: dict[str, np.ndarray], params: GaussianParams, **kwargs: object) -> Splat:
    return gaussian_to_splat(
        raw["xyz"], raw["features_dc"], raw["opacity"], raw["scaling"], raw["rotation"], params, **kwargs
    )


# -- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_matches_float64_reference_of_save_ply(activation: str) -> None:
    raw = raw_gaussian(np.random.default_rng(7))
    params = GaussianParams.from_config(scaling_activation=activation)  # type: ignore[arg-type]
    splat = convert(raw, params)
    expected = reference_save_ply(raw, params)
    assert splat.names == STANDARD_COLUMNS
    for name, values in expected.items():
        np.testing.assert_allclose(splat[name], values.astype(np.float32), rtol=2e-6, atol=2e-6, err_msg=name)
    for name in ("nx", "ny", "nz"):
        assert not splat[name].any()


def test_biases_from_config_are_trellis_decoder_constants() -> None:
    params = GaussianParams.from_config()
    assert 1.0 / (1.0 + math.exp(-params.opacity_bias)) == pytest.approx(0.1, rel=1e-12)
    assert math.log1p(math.exp(params.scale_bias)) == pytest.approx(4e-3, rel=1e-12)
    assert params.aabb == (-0.5, -0.5, -0.5, 1.0, 1.0, 1.0)
    assert params.rotation_bias == (1.0, 0.0, 0.0, 0.0)
    assert math.exp(GaussianParams.from_config(scaling_activation="exp").scale_bias) == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="scaling activation"):
        GaussianParams.from_config(scaling_activation="relu")  # type: ignore[arg-type]


def test_opacity_logit_is_raw_plus_bias_where_float32_would_saturate() -> None:
    raw = raw_gaussian(np.random.default_rng(1), 64)
    raw["opacity"][:, 0] = np.linspace(-30.0, 30.0, 64, dtype=np.float32)
    params = GaussianParams.from_config()
    splat = convert(raw, params)
    assert np.isfinite(splat["opacity"]).all()
    np.testing.assert_allclose(splat["opacity"], raw["opacity"][:, 0] + params.opacity_bias, atol=1e-4)


def test_covariances_are_the_z_up_covariances_rotated_to_y_up() -> None:
    raw = raw_gaussian(np.random.default_rng(3), 500)
    params = GaussianParams.from_config()
    splat = convert(raw, params)
    no_transform = convert(raw, params, transform=None)

    def covariance(s: Splat) -> np.ndarray:
        rot = reference_quaternion_to_matrix(s.stack(("rot_0", "rot_1", "rot_2", "rot_3")).astype(np.float64))
        var = np.exp(2.0 * s.stack(("scale_0", "scale_1", "scale_2")).astype(np.float64))
        return np.einsum("nij,nj,nkj->nik", rot, var, rot)

    expected = np.einsum("ij,njk,lk->nil", SAVE_PLY_TRANSFORM, covariance(no_transform), SAVE_PLY_TRANSFORM)
    np.testing.assert_allclose(covariance(splat), expected, rtol=1e-4, atol=1e-9)


def test_transform_is_save_plys_axis_swap() -> None:
    raw = raw_gaussian(np.random.default_rng(0), 2)
    raw["xyz"][:] = [[0.5, 0.5, 1.0], [1.0, 0.75, 0.5]]  # top centre; +x side, a little towards +y
    splat = convert(raw, GaussianParams.from_config())
    # (x, y, z) -> (x, -z, y): TRELLIS's up (+z) becomes -y, its +y becomes +z.
    np.testing.assert_allclose(splat.positions, [[0.0, -0.5, 0.0], [0.5, 0.0, 0.25]], atol=1e-7)


def test_without_transform_quaternions_are_written_as_biased_raw_values() -> None:
    raw = raw_gaussian(np.random.default_rng(4), 100)
    params = GaussianParams.from_config()
    splat = convert(raw, params, transform=None)
    expected = raw["rotation"].astype(np.float64) + np.asarray(params.rotation_bias)
    np.testing.assert_allclose(splat.stack(("rot_0", "rot_1", "rot_2", "rot_3")), expected, rtol=1e-6)
    np.testing.assert_allclose(splat.positions, raw["xyz"] - 0.5, atol=1e-7)


def test_zero_quaternion_becomes_the_transform_itself() -> None:
    raw = raw_gaussian(np.random.default_rng(5), 3)
    raw["rotation"][:] = [-1.0, 0.0, 0.0, 0.0]  # cancels the [1, 0, 0, 0] bias
    splat = convert(raw, GaussianParams.from_config())
    half = math.sqrt(0.5)
    np.testing.assert_allclose(
        splat.stack(("rot_0", "rot_1", "rot_2", "rot_3")), [[half, half, 0, 0]] * 3, atol=1e-7
    )


def test_shapes_and_transform_are_checked() -> None:
    raw = raw_gaussian(np.random.default_rng(6), 10)
    params = GaussianParams.from_config()
    with pytest.raises(ValueError, match=r"features_dc has shape \(10, 3\)"):
        convert({**raw, "features_dc": raw["features_dc"][:, 0, :]}, params)
    with pytest.raises(ValueError, match="rotation has shape"):
        convert({**raw, "rotation": raw["rotation"][:5]}, params)
    with pytest.raises(ValueError, match="must be a rotation"):
        convert(raw, params, transform=np.diag([1.0, 1.0, -1.0]))
    assert len(convert({k: v[:0] for k, v in raw.items()}, params)) == 0
