"""fix_opacity: a constant logit shift that keeps spread and order, never touches anything else."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics import check_splat, fix_opacity, splat_stats
from diagnostics.ply_fixer import DEFAULT_TARGET, DEFAULT_TRIGGER, TRELLIS_OPACITY_BIAS
from diagnostics.splat import Splat
from diagnostics.stats import TRANSPARENT_LOGIT

MakeSplat = Callable[..., Splat]
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _other_columns(splat: Splat) -> list[str]:
    return [name for name in splat.names if name != "opacity"]


def _column_bytes(splat: Splat, names: list[str]) -> dict[str, bytes]:
    return {name: np.ascontiguousarray(splat[name]).tobytes() for name in names}


@st.composite
def splat_recipes(draw: st.DrawFn) -> dict[str, object]:
    """Parameters of realistic splats whose opacity spans faint to healthy, some with saturated logits."""
    return {
        "n": draw(st.integers(1, 400)),
        "seed": draw(st.integers(0, 2**31)),
        "opacity_mean": draw(st.floats(-14.0, 4.0)),
        "opacity_std": draw(st.floats(0.0, 4.0)),
        "normals": draw(st.booleans()),
        "saturate": draw(st.sampled_from([0.0, 0.0, 0.05, 0.3])),
    }


def cook(recipe: dict[str, object], make_splat: MakeSplat) -> Splat:
    params = dict(recipe)
    saturate = float(params.pop("saturate"))  # type: ignore[arg-type]
    splat = make_splat(**params)
    if saturate:
        rng = np.random.default_rng(int(params["seed"]) + 1)  # type: ignore[call-overload]
        opacity = splat["opacity"].copy()
        opacity[rng.random(len(splat)) < saturate / 2] = np.inf
        opacity[rng.random(len(splat)) < saturate / 2] = -np.inf
        splat = splat.with_column("opacity", opacity)
    return splat


settings_triggers = st.tuples(st.floats(-10.0, 2.0), st.floats(0.0, 6.0)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=150, deadline=None)
@given(splat_recipes(), settings_triggers)
def test_fix_shifts_faint_splats_and_keeps_everything_else(
    make_splat: MakeSplat, recipe: dict[str, object], levels: tuple[float, float]
) -> None:
    splat = cook(recipe, make_splat)
    trigger, target = levels
    before = splat["opacity"].copy()
    other = _column_bytes(splat, _other_columns(splat))
    input_bytes = splat.to_ply_bytes()

    fixed, report = fix_opacity(splat, trigger=trigger, target=target)
    after = fixed["opacity"]

    assert splat.to_ply_bytes() == input_bytes  # the input is never modified
    assert _column_bytes(fixed, _other_columns(splat)) == other
    assert report.dropped_corrupted == 0 and len(fixed) == len(splat)
    # Saturated gaussians stay where they were, saturated the same way.
    np.testing.assert_array_equal(np.isposinf(after), np.isposinf(before))
    np.testing.assert_array_equal(np.isneginf(after), np.isneginf(before))

    finite = np.isfinite(before)
    # Faint or not is judged here from a float64 mean of the raw finite logits, not from the report.
    reference_mean = float(before[finite].astype(np.float64).mean()) if finite.any() else None
    if not report.faint:
        assert fixed is splat and report.shift == 0.0 and not report.fixed
        assert reference_mean is None or reference_mean >= trigger - 1e-4
        return
    assert reference_mean is not None and reference_mean < trigger
    assert report.fixed and report.mean_before == pytest.approx(reference_mean, rel=1e-12, abs=1e-12)
    largest = float(np.abs(after[finite]).max())
    rounding = FLOAT32_EPS * max(1.0, largest)
    # The mean reaches the target...
    assert report.mean_after == pytest.approx(target, abs=rounding)
    assert float(after[finite].astype(np.float64).mean()) == pytest.approx(target, abs=rounding)
    # ...the spread is kept to float32 rounding...
    std_before = float(before[finite].astype(np.float64).std())
    std_after = float(after[finite].astype(np.float64).std())
    assert abs(std_after - std_before) <= 2 * rounding
    assert report.std_before == pytest.approx(std_before, rel=1e-12, abs=1e-12)
    # ...every gaussian keeps its rank (rounding may only merge neighbours, never swap them)...
    order = np.argsort(before[finite], kind="stable")
    assert np.all(np.diff(after[finite][order]) >= 0)
    # ...and it is one constant shift, not noise.
    moved = after[finite].astype(np.float64) - before[finite].astype(np.float64)
    np.testing.assert_allclose(moved, report.shift, rtol=0, atol=rounding)


@settings(max_examples=100, deadline=None)
@given(splat_recipes(), settings_triggers)
def test_fix_is_idempotent_and_deterministic(
    make_splat: MakeSplat, recipe: dict[str, object], levels: tuple[float, float]
) -> None:
    splat = cook(recipe, make_splat)
    trigger, target = levels
    once, _ = fix_opacity(splat, trigger=trigger, target=target)
    again, _ = fix_opacity(splat, trigger=trigger, target=target)
    twice, report = fix_opacity(once, trigger=trigger, target=target)
    assert once.to_ply_bytes() == again.to_ply_bytes()
    assert twice.to_ply_bytes() == once.to_ply_bytes()
    assert not report.fixed


@settings(max_examples=60, deadline=None)
@given(splat_recipes())
def test_reusing_precomputed_stats_gives_the_same_result(
    make_splat: MakeSplat, recipe: dict[str, object]
) -> None:
    splat = cook(recipe, make_splat)
    direct, direct_report = fix_opacity(splat)
    reused, reused_report = fix_opacity(splat, stats=splat_stats(splat))
    assert reused.to_ply_bytes() == direct.to_ply_bytes()
    assert reused_report.fixed == direct_report.fixed
    assert reused_report.shift == pytest.approx(direct_report.shift, rel=1e-12, abs=1e-12)


def test_healthy_splat_is_returned_byte_identical(make_splat: MakeSplat) -> None:
    splat = Splat.from_ply_bytes(make_splat(8_000, seed=11).to_ply_bytes())
    original = splat.to_ply_bytes()
    fixed, report = fix_opacity(splat)
    assert fixed is splat
    assert fixed.to_ply_bytes() == original
    assert not report.fixed and not report.faint and report.shift == 0.0
    assert "healthy" in report.reason


def test_corrupted_gaussians_are_dropped_and_counted(make_splat: MakeSplat) -> None:
    splat = make_splat(2_000, seed=12, opacity_mean=-9.0, opacity_std=2.0, sh_rest=3)
    data = splat.data.copy()
    data["x"][5] = np.nan
    data["f_rest_2"][6] = np.nan
    data["scale_0"][7] = np.inf
    data["rot_1"][8] = -np.inf
    data["opacity"][9] = np.nan
    data["opacity"][10] = np.inf  # saturated: kept
    data["opacity"][11] = -np.inf  # saturated: kept
    broken = Splat(data)
    fixed, report = fix_opacity(broken)
    assert report.dropped_corrupted == 5
    assert report.count_after == len(fixed) == 1_995
    assert "corrupted" in report.reason
    assert report.saturated_pos == 1 and report.saturated_neg == 1
    keep = np.ones(2_000, dtype=bool)
    keep[[5, 6, 7, 8, 9]] = False
    expected = data[keep]
    assert _column_bytes(fixed, _other_columns(broken)) == _column_bytes(
        Splat(expected), _other_columns(broken)
    )
    assert fixed["opacity"][5] == np.inf and fixed["opacity"][6] == -np.inf
    assert not any(f.code == "non_finite" for f in check_splat(fixed))


def test_corrupted_rows_are_dropped_even_when_the_opacity_is_healthy(make_splat: MakeSplat) -> None:
    splat = make_splat(1_000, seed=13)
    fixed, report = fix_opacity(splat.with_column("y", np.where(np.arange(1_000) == 3, np.nan, splat["y"])))
    assert report.fixed and not report.faint and report.dropped_corrupted == 1 and report.shift == 0.0
    assert len(fixed) == 999


def test_faint_splat_with_saturated_logits_keeps_them_saturated(make_splat: MakeSplat) -> None:
    splat = make_splat(10_000, seed=14, opacity_mean=-9.5, opacity_std=2.5)
    opacity = splat["opacity"].copy()
    opacity[:300] = -np.inf
    opacity[300:350] = np.inf
    faint = splat.with_column("opacity", opacity)
    assert any(f.code == "mostly_transparent" for f in check_splat(faint))
    fixed, report = fix_opacity(faint)
    assert report.faint and report.saturated_neg == 300 and report.saturated_pos == 50
    assert np.all(fixed["opacity"][:300] == -np.inf) and np.all(fixed["opacity"][300:350] == np.inf)
    assert report.mean_after == pytest.approx(DEFAULT_TARGET, abs=1e-5)
    assert report.std_after == pytest.approx(report.std_before, abs=1e-5)
    assert check_splat(fixed) == []


def test_default_trigger_leaves_trellis_like_splats_alone(make_splat: MakeSplat) -> None:
    # A splat centred on TRELLIS's own bias is what the model makes: it is not faint.
    _, report = fix_opacity(make_splat(5_000, seed=15, opacity_mean=TRELLIS_OPACITY_BIAS, opacity_std=2.8))
    assert not report.faint
    assert TRANSPARENT_LOGIT < DEFAULT_TRIGGER < DEFAULT_TARGET


def test_default_trigger_fires_before_the_validator_would_reject(make_splat: MakeSplat) -> None:
    # Just under the trigger, with a real spread, the splat is far from the 80%-transparent rule:
    # the fixer acts while it is still a safety margin, not a rescue.
    splat = make_splat(20_000, seed=16, opacity_mean=DEFAULT_TRIGGER - 0.05, opacity_std=2.78)
    stats = splat_stats(splat)
    assert stats.opacity.transparent_fraction is not None and stats.opacity.transparent_fraction < 0.4
    _, report = fix_opacity(splat)
    assert report.faint


def test_settings_are_checked(make_splat: MakeSplat) -> None:
    splat = make_splat(100, 0)
    with pytest.raises(ValueError, match="below trigger"):
        fix_opacity(splat, trigger=-2.0, target=-3.0)
    with pytest.raises(ValueError, match="finite"):
        fix_opacity(splat, trigger=math.nan)
    with pytest.raises(ValueError, match="finite"):
        fix_opacity(splat, target=math.inf)


def test_no_finite_logits_and_empty_splats_are_left_alone(make_splat: MakeSplat) -> None:
    empty = Splat.empty(0)
    fixed, report = fix_opacity(empty)
    assert fixed is empty and not report.fixed and report.mean_before is None
    saturated = make_splat(10, 0).with_column("opacity", np.full(10, -np.inf, dtype=np.float32))
    fixed, report = fix_opacity(saturated)
    assert fixed is saturated and "no finite" in report.reason


def test_report_serialises(make_splat: MakeSplat) -> None:
    _, report = fix_opacity(make_splat(500, seed=17, opacity_mean=-10.0))
    document = report.to_dict()
    assert document["fixed"] is True and document["faint"] is True
    assert set(document) >= {
        "dropped_corrupted",
        "shift",
        "mean_before",
        "std_before",
        "mean_after",
        "std_after",
    }


def test_real_file_is_untouched(real_ply_bytes: bytes) -> None:
    splat = Splat.from_ply_bytes(real_ply_bytes)
    fixed, report = fix_opacity(splat)
    assert fixed is splat and not report.fixed
    assert fixed.to_ply_bytes() == real_ply_bytes
    assert check_splat(splat) == []


def test_real_file_after_simulated_spz_saturation(real_ply_bytes: bytes) -> None:
    splat = Splat.from_ply_bytes(real_ply_bytes)
    opacity = splat["opacity"].copy()
    # SPZ stores alpha in 8 bits: alpha 255 decompresses to +inf, alpha 0 to -inf.
    alpha = np.round(255.0 / (1.0 + np.exp(-opacity.astype(np.float64))))
    opacity[alpha == 255] = np.inf
    opacity[alpha == 0] = -np.inf
    saturated = splat.with_column("opacity", opacity)
    stats = splat_stats(saturated)
    assert stats.opacity.pos_inf > 0 and stats.corrupted_count == 0
    assert stats.opacity.mean is not None
    fixed, report = fix_opacity(saturated)
    assert fixed is saturated and not report.fixed
    assert check_splat(saturated) == []
    # Lower the whole splat into faint territory: the shift lifts it and the infinities survive.
    faint = saturated.with_column("opacity", opacity - np.float32(9.0))
    lifted, report = fix_opacity(faint)
    assert report.faint
    np.testing.assert_array_equal(np.isinf(lifted["opacity"]), np.isinf(opacity))
    assert check_splat(lifted) == []


@settings(max_examples=80, deadline=None)
@given(splat_recipes(), settings_triggers)
def test_in_place_gives_the_copying_fixers_bytes_without_a_copy(
    make_splat: MakeSplat, recipe: dict[str, object], levels: tuple[float, float]
) -> None:
    trigger, target = levels
    ply = cook(recipe, make_splat).to_ply_bytes()
    copied, copy_report = fix_opacity(Splat.from_ply_bytes(ply), trigger=trigger, target=target)

    owned = bytearray(ply)
    splat = Splat.from_ply_bytes(memoryview(owned))
    fixed, report = fix_opacity(splat, trigger=trigger, target=target, in_place=True)

    assert report == copy_report
    assert fixed.to_ply_bytes() == copied.to_ply_bytes()
    if report.faint and not report.dropped_corrupted:
        # Shifted where it lies: the caller's buffer now holds the fixed PLY, header and all.
        assert fixed is splat and bytes(owned) == copied.to_ply_bytes()
    elif report.dropped_corrupted:
        assert bytes(owned) == ply  # dropping rows copies: the buffer is left as it was
    else:
        assert fixed is splat and bytes(owned) == ply


def test_in_place_on_read_only_bytes_copies(make_splat: MakeSplat) -> None:
    ply = make_splat(500, seed=4, opacity_mean=-10.0, opacity_std=1.0).to_ply_bytes()
    splat = Splat.from_ply_bytes(ply)
    fixed, report = fix_opacity(splat, in_place=True)
    assert report.faint and fixed is not splat
    assert splat.to_ply_bytes() == ply
    assert float(fixed["opacity"].astype(np.float64).mean()) == pytest.approx(DEFAULT_TARGET, abs=1e-5)
