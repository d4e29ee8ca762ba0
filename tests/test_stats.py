"""splat_stats: numbers checked against plain numpy, finite on saturated input, one vectorised scan."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics import SplatStats, fix_opacity, splat_stats
from diagnostics.ply_io import REQUIRED_PROPERTIES, float_dtype
from diagnostics.splat import Splat
from diagnostics.stats import OPACITY_PERCENTILES, TRANSPARENT_LOGIT, restat_opacity, rotations_all_identity

MakeSplat = Callable[..., Splat]


def _reference_opacity(opacity: np.ndarray) -> dict[str, Any]:
    """The same numbers computed the slow, obvious way."""
    finite = opacity[np.isfinite(opacity)].astype(np.float64)
    with np.errstate(over="ignore"):
        alpha = 1.0 / (1.0 + np.exp(-opacity.astype(np.float64)))
    return {
        "finite": finite.size,
        "pos_inf": int(np.sum(opacity == np.inf)),
        "neg_inf": int(np.sum(opacity == -np.inf)),
        "nan": int(np.sum(np.isnan(opacity))),
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "percentiles": [float(np.percentile(finite, q)) for q in OPACITY_PERCENTILES]
        if finite.size
        else None,
        "transparent": int(np.sum(alpha < 1e-3)),
    }


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"JSON holds {name}")


def strict_json(text: str) -> Any:
    """Parse JSON, failing on NaN / Infinity (which the standard does not allow)."""
    return json.loads(text, parse_constant=_refuse_constant)


def _with_opacity(splat: Splat, opacity: np.ndarray) -> Splat:
    return splat.with_column("opacity", opacity)


def test_stats_match_numpy_on_a_realistic_splat(make_splat: MakeSplat) -> None:
    splat = make_splat(20_000, seed=1)
    stats = splat_stats(splat)
    ref = _reference_opacity(splat["opacity"])
    assert stats.count == 20_000
    assert stats.columns == list(splat.names)
    assert stats.opacity.finite == 20_000 and stats.opacity.pos_inf == 0 and stats.opacity.neg_inf == 0
    assert stats.opacity.mean == pytest.approx(ref["mean"], rel=1e-12)
    assert stats.opacity.std == pytest.approx(ref["std"], rel=1e-12)
    assert list(stats.opacity.percentiles.values()) == pytest.approx(ref["percentiles"], rel=1e-6)
    assert stats.opacity.min == float(splat["opacity"].min())
    assert stats.opacity.max == float(splat["opacity"].max())
    assert stats.opacity.transparent_count == ref["transparent"]
    for i in range(3):
        scale = splat[f"scale_{i}"].astype(np.float64)
        assert stats.log_scale_mean[i] == pytest.approx(scale.mean(), rel=1e-12)
        assert stats.log_scale_std[i] == pytest.approx(scale.std(), rel=1e-12)
    positions = splat.positions
    assert stats.bbox_min == positions.min(axis=0).tolist()
    assert stats.bbox_max == positions.max(axis=0).tolist()
    assert stats.nonfinite_per_column == dict.fromkeys(splat.names, 0)
    assert stats.corrupted_count == 0
    assert stats.all_rotations_identity is False


def _opacity_arrays(max_size: int = 300) -> st.SearchStrategy[np.ndarray]:
    element = st.one_of(
        st.floats(-40, 40, width=32),
        st.sampled_from([np.inf, -np.inf, np.nan, TRANSPARENT_LOGIT]),
    )
    return st.lists(element, max_size=max_size).map(lambda v: np.array(v, dtype=np.float32))


@settings(max_examples=120, deadline=None)
@given(_opacity_arrays())
def test_opacity_stats_stay_finite_and_count_saturation(opacity: np.ndarray) -> None:
    splat = Splat.empty(opacity.size).with_column("opacity", opacity)
    stats = splat_stats(splat)
    ref = _reference_opacity(opacity)
    o = stats.opacity
    assert (o.finite, o.pos_inf, o.neg_inf, o.nan) == (
        ref["finite"],
        ref["pos_inf"],
        ref["neg_inf"],
        ref["nan"],
    )
    assert o.finite + o.pos_inf + o.neg_inf + o.nan == stats.count
    assert o.transparent_count == ref["transparent"]
    if ref["mean"] is None:
        assert (
            o.mean is None
            and o.std is None
            and o.min is None
            and all(v is None for v in o.percentiles.values())
        )
    else:
        assert o.mean == pytest.approx(ref["mean"], rel=1e-9, abs=1e-9)
        assert o.std == pytest.approx(ref["std"], rel=1e-9, abs=1e-9)
        assert list(o.percentiles.values()) == pytest.approx(ref["percentiles"], rel=1e-9, abs=1e-9)
    assert stats.nonfinite_per_column["opacity"] == o.pos_inf + o.neg_inf + o.nan
    assert stats.corrupted_count == o.nan
    # Serialises without NaN or Infinity, whatever the input held.
    document = strict_json(stats.to_json())
    assert document["opacity"]["pos_inf"] == o.pos_inf


def test_empty_splat_gives_null_not_nan() -> None:
    stats = splat_stats(Splat.empty(0))
    document = strict_json(stats.to_json())
    assert document["count"] == 0
    assert document["opacity"]["mean"] is None
    assert document["opacity"]["transparent_fraction"] is None
    assert document["log_scale_mean"] == [None, None, None]
    assert document["bbox_min"] == [None, None, None]
    assert document["all_rotations_identity"] is None
    strict_json(stats.to_json())


def test_saturated_opacity_like_an_spz_round_trip(make_splat: MakeSplat) -> None:
    splat = make_splat(10_000, seed=2, opacity_mean=2.68, opacity_std=1.87)
    opacity = splat["opacity"].copy()
    opacity[opacity > 5.5] = np.inf  # what SPZ's 8-bit alpha does to high logits
    opacity[opacity < -5.5] = -np.inf
    stats = splat_stats(_with_opacity(splat, opacity))
    ref = _reference_opacity(opacity)
    assert stats.opacity.pos_inf == ref["pos_inf"] > 0
    assert stats.opacity.neg_inf == ref["neg_inf"]
    assert stats.opacity.max is not None and stats.opacity.max <= 5.5
    assert stats.opacity.mean == pytest.approx(ref["mean"], rel=1e-12)
    assert stats.corrupted_count == 0
    assert "finite" in stats.opacity.counting
    strict_json(stats.to_json())


def test_nonfinite_values_are_counted_per_column_and_per_gaussian(make_splat: MakeSplat) -> None:
    splat = make_splat(5_000, seed=3)
    data = splat.data.copy()
    data["x"][[10, 20]] = np.nan
    data["scale_1"][[20, 30, 40]] = np.inf
    data["rot_3"][4999] = -np.inf
    data["opacity"][[1, 2]] = [np.inf, -np.inf]  # saturated, not corruption
    data["opacity"][3] = np.nan
    stats = splat_stats(Splat(data))
    nonzero = {name: n for name, n in stats.nonfinite_per_column.items() if n}
    assert nonzero == {"x": 2, "scale_1": 3, "rot_3": 1, "opacity": 3}
    # Rows 10, 20, 30, 40, 4999 and 3 (NaN opacity); row 20 is bad twice but counted once.
    assert stats.corrupted_count == 6
    assert stats.opacity.nan == 1
    finite_x = data["x"][np.isfinite(data["x"])]
    assert stats.bbox_min[0] == float(finite_x.min())
    finite_scale = data["scale_1"][np.isfinite(data["scale_1"])].astype(np.float64)
    assert stats.log_scale_mean[1] == pytest.approx(finite_scale.mean(), rel=1e-12)
    strict_json(stats.to_json())


def test_column_order_and_layout_do_not_change_the_numbers(make_splat: MakeSplat) -> None:
    splat = make_splat(3_000, seed=4, sh_rest=6)
    names = list(splat.names)
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    reordered = np.empty(len(splat), dtype=float_dtype(shuffled))
    for name in shuffled:
        reordered[name] = splat[name]
    big_endian = splat.data.astype([(n, ">f4") for n in names])
    base = splat_stats(splat).to_dict()
    for other in (Splat(reordered), Splat(big_endian), Splat(splat.data[::1])):
        document = splat_stats(other).to_dict()
        assert {k: v for k, v in document.items() if k not in ("columns", "nonfinite_per_column")} == {
            k: v for k, v in base.items() if k not in ("columns", "nonfinite_per_column")
        }


def test_rotation_identity_follows_the_validator_rule() -> None:
    def with_rotations(rotations: np.ndarray) -> Splat:
        data = np.zeros(len(rotations), dtype=float_dtype(list(REQUIRED_PROPERTIES)))
        for i in range(4):
            data[f"rot_{i}"] = rotations[:, i]
        return Splat(data)

    identity = np.tile([1.0, 0.0, 0.0, 0.0], (100, 1))
    assert rotations_all_identity(with_rotations(identity)) is True
    # The validator normalises first: a scaled identity is still the identity.
    assert rotations_all_identity(with_rotations(identity * 3.0)) is True
    # Inside torch.allclose's default tolerance is still identity; outside it is not.
    near = identity.copy()
    near[50, 1] = 5e-9
    assert rotations_all_identity(with_rotations(near)) is True
    off = identity.copy()
    off[99, 2] = 1e-6
    assert rotations_all_identity(with_rotations(off)) is False
    # q and -q are the same rotation, but the validator's elementwise comparison says not identity.
    flipped = identity.copy()
    flipped[0] = [-1.0, 0.0, 0.0, 0.0]
    assert rotations_all_identity(with_rotations(flipped)) is False
    assert rotations_all_identity(with_rotations(np.zeros((5, 4)))) is False
    assert rotations_all_identity(Splat.empty(0)) is None


def test_real_file_stats(real_ply_bytes: bytes) -> None:
    stats = splat_stats(Splat.from_ply_bytes(real_ply_bytes))
    assert isinstance(stats, SplatStats)
    assert stats.count == 52_709
    assert "nx" not in stats.columns
    assert math.isclose(stats.opacity.mean or 0.0, 0.68, abs_tol=0.005)
    assert math.isclose(stats.opacity.std or 0.0, 2.78, abs_tol=0.005)
    assert stats.corrupted_count == 0
    assert stats.opacity.transparent_fraction is not None and stats.opacity.transparent_fraction < 0.8
    assert stats.all_rotations_identity is False
    assert all(-7.0 < m < -4.0 for m in stats.log_scale_mean if m is not None)


def test_stats_do_no_python_work_per_gaussian(
    make_splat: MakeSplat, python_calls: Callable[[Callable[[], object]], int]
) -> None:
    small = make_splat(1_000, seed=5)
    large = make_splat(200_000, seed=5)
    for splat in (small, large):
        opacity = splat["opacity"].copy()
        opacity[::7] = np.inf  # exercise the saturated path too
        splat.data["opacity"] = opacity
    small_calls = python_calls(lambda: splat_stats(small))
    large_calls = python_calls(lambda: splat_stats(large))
    # 200x the gaussians may only add per-block work (16K rows a block), never per-gaussian work.
    assert large_calls - small_calls < 20 * (200_000 // 16_384 + 1)
    assert large_calls < 2 * small_calls


def test_restat_after_an_opacity_only_change_equals_a_full_pass(make_splat: MakeSplat) -> None:
    splat = make_splat(30_000, seed=6, opacity_mean=-9.0)
    opacity = splat["opacity"].copy()
    opacity[:100] = np.inf
    splat = splat.with_column("opacity", opacity)
    before = splat_stats(splat)
    fixed, report = fix_opacity(splat, stats=before)
    assert report.faint and not report.dropped_corrupted
    assert restat_opacity(before, fixed).to_dict() == splat_stats(fixed).to_dict()
    # Following the shift through the kept sorted column gives the same figures without a sort.
    kept = splat_stats(splat, keep_sorted_opacity=True)
    assert kept.sorted_opacity is not None and before.sorted_opacity is None
    assert restat_opacity(kept, fixed, report.shift).to_dict() == splat_stats(fixed).to_dict()


def test_restat_falls_back_to_a_full_pass_when_more_than_opacity_changed(make_splat: MakeSplat) -> None:
    splat = make_splat(2_000, seed=7)
    before = splat_stats(splat)
    fewer = splat.select(np.arange(2_000) % 3 != 0)
    assert restat_opacity(before, fewer).to_dict() == splat_stats(fewer).to_dict()
    broken = splat.with_column("opacity", np.where(np.arange(2_000) == 5, np.nan, splat["opacity"]))
    assert restat_opacity(before, broken).to_dict() == splat_stats(broken).to_dict()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3000),
    st.integers(0, 2**31),
    st.floats(-14.0, 2.0),
    st.floats(0.0, 5.0),
    st.sampled_from([0.0, 0.02, 0.5]),
)
def test_restat_following_the_shift_equals_a_full_pass(
    make_splat: MakeSplat, n: int, seed: int, mean: float, std: float, saturated: float
) -> None:
    splat = make_splat(n, seed=seed, opacity_mean=mean, opacity_std=std)
    opacity = splat["opacity"].copy()
    rng = np.random.default_rng(seed)
    opacity[rng.random(n) < saturated / 2] = np.inf
    opacity[rng.random(n) < saturated / 2] = -np.inf
    splat = splat.with_column("opacity", opacity)
    before = splat_stats(splat, keep_sorted_opacity=True)
    fixed, report = fix_opacity(splat, trigger=4.0, target=5.0, stats=before)
    if not report.faint:
        return
    assert restat_opacity(before, fixed, report.shift).to_dict() == splat_stats(fixed).to_dict()
