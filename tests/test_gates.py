"""Quality gates: splats built to sit just inside and just outside every threshold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from diagnostics import GateFailure, check_splat, splat_stats
from diagnostics.gates import MIN_GAUSSIANS
from diagnostics.ply_io import MAX_SPZ_VERTICES, REQUIRED_PROPERTIES, float_dtype
from diagnostics.splat import Splat
from diagnostics.stats import TRANSPARENT_LOGIT

MakeSplat = Callable[..., Splat]

TRANSPARENT = -10.0  # sigmoid ~ 4.5e-5
VISIBLE = 1.0


def codes(failures: list[GateFailure]) -> list[str]:
    return [f.code for f in failures]


def test_a_realistic_splat_passes_every_gate(make_splat: MakeSplat) -> None:
    assert check_splat(make_splat(MIN_GAUSSIANS + 500, seed=1)) == []


def test_gaussian_count_floor(make_splat: MakeSplat) -> None:
    assert "too_few_gaussians" not in codes(check_splat(make_splat(MIN_GAUSSIANS, seed=2)))
    failures = check_splat(make_splat(MIN_GAUSSIANS - 1, seed=2))
    assert codes(failures) == ["too_few_gaussians"]
    assert "6,999" in failures[0].message and "7,000" in failures[0].message


def test_min_gaussians_is_configurable(make_splat: MakeSplat) -> None:
    splat = make_splat(100, seed=3)
    assert "too_few_gaussians" not in codes(check_splat(splat, min_gaussians=100))
    assert "too_few_gaussians" in codes(check_splat(splat, min_gaussians=101))


def _transparent_splat(make_splat: MakeSplat, n: int, transparent: int) -> Splat:
    splat = make_splat(n, seed=4)
    opacity = np.full(n, VISIBLE, dtype=np.float32)
    opacity[:transparent] = TRANSPARENT
    return splat.with_column("opacity", opacity)


def test_transparency_rule_is_strictly_more_than_80_percent(make_splat: MakeSplat) -> None:
    n = 10_000
    assert "mostly_transparent" not in codes(check_splat(_transparent_splat(make_splat, n, 8_000)))
    failures = check_splat(_transparent_splat(make_splat, n, 8_001))
    assert codes(failures) == ["mostly_transparent"]
    assert "80.0%" in failures[0].message


def test_transparency_threshold_is_sigmoid_one_in_a_thousand(make_splat: MakeSplat) -> None:
    n = 10_000
    just_below = np.float32(TRANSPARENT_LOGIT - 1e-4)  # sigmoid just under 1e-3: transparent
    just_above = np.float32(TRANSPARENT_LOGIT + 1e-4)
    assert 1.0 / (1.0 + np.exp(-float(just_below))) < 1e-3 < 1.0 / (1.0 + np.exp(-float(just_above)))
    splat = make_splat(n, seed=5)
    assert "mostly_transparent" in codes(check_splat(splat.with_column("opacity", np.full(n, just_below))))
    assert "mostly_transparent" not in codes(
        check_splat(splat.with_column("opacity", np.full(n, just_above)))
    )


def test_negative_infinity_counts_as_transparent(make_splat: MakeSplat) -> None:
    n = 10_000
    splat = _transparent_splat(make_splat, n, 0)
    opacity = splat["opacity"].copy()
    opacity[:8_001] = -np.inf
    assert codes(check_splat(splat.with_column("opacity", opacity))) == ["mostly_transparent"]
    opacity[:8_001] = np.inf  # saturated opaque: valid, not transparent
    assert check_splat(splat.with_column("opacity", opacity)) == []


def _with_rotations(splat: Splat, rotations: np.ndarray) -> Splat:
    data = splat.data.copy()
    for i in range(4):
        data[f"rot_{i}"] = rotations[:, i]
    return Splat(data)


def test_identity_rotations(make_splat: MakeSplat) -> None:
    n = MIN_GAUSSIANS
    splat = make_splat(n, seed=6)
    identity = np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (n, 1))
    failures = check_splat(_with_rotations(splat, identity))
    assert codes(failures) == ["identity_rotations"]
    one_turned = identity.copy()
    one_turned[n - 1] = [0.9, 0.1, 0.0, 0.0]
    assert check_splat(_with_rotations(splat, one_turned)) == []


def test_non_finite_values(make_splat: MakeSplat) -> None:
    splat = make_splat(MIN_GAUSSIANS, seed=7, sh_rest=3)
    for column in ("x", "f_rest_1", "scale_2", "rot_0"):
        for bad in (np.nan, np.inf, -np.inf):
            values = splat[column].copy()
            values[123] = bad
            failures = check_splat(splat.with_column(column, values))
            assert codes(failures) == ["non_finite"], (column, bad)
            assert column in failures[0].message and "1 gaussians" in failures[0].message
    opacity = splat["opacity"].copy()
    opacity[[1, 2]] = [np.inf, -np.inf]
    assert check_splat(splat.with_column("opacity", opacity)) == []
    opacity[3] = np.nan
    failures = check_splat(splat.with_column("opacity", opacity))
    assert codes(failures) == ["non_finite"] and "opacity: 1" in failures[0].message


def test_degenerate_floor_is_off_by_default_and_exact_when_set(make_splat: MakeSplat) -> None:
    floor = 50_000
    below = make_splat(floor - 1, seed=8)
    assert check_splat(below) == []
    assert codes(check_splat(below, degenerate_min=floor)) == ["degenerate_count"]
    at = make_splat(floor, seed=8)
    assert check_splat(at, degenerate_min=floor) == []


def test_spz_vertex_limit() -> None:
    # A real splat one over SPZ's limit, and the same memory viewed at exactly the limit.
    names = list(REQUIRED_PROPERTIES)
    data = np.zeros(MAX_SPZ_VERTICES + 1, dtype=float_dtype(names))
    over = Splat(data)
    at = Splat(data[:MAX_SPZ_VERTICES])
    failures = check_splat(over)
    assert codes(failures) == ["too_many_gaussians"]
    assert f"{MAX_SPZ_VERTICES:,}" in failures[0].message
    assert check_splat(at) == []


def test_several_failures_are_all_reported() -> None:
    data = np.zeros(10, dtype=float_dtype(list(REQUIRED_PROPERTIES)))
    data["rot_0"] = 1.0
    data["opacity"] = TRANSPARENT
    data["y"][0] = np.nan
    assert sorted(codes(check_splat(Splat(data)))) == sorted(
        ["non_finite", "too_few_gaussians", "mostly_transparent", "identity_rotations"]
    )


def test_empty_splat_fails_only_the_count_floor() -> None:
    assert codes(check_splat(Splat.empty(0))) == ["too_few_gaussians"]


def test_precomputed_stats_give_the_same_answer(make_splat: MakeSplat) -> None:
    splat = _transparent_splat(make_splat, 7_500, 7_000)
    assert check_splat(splat, stats=splat_stats(splat)) == check_splat(splat)
    # Stats of another splat are not trusted.
    assert check_splat(splat, stats=splat_stats(make_splat(10, seed=1))) == check_splat(splat)


def test_failures_serialise(make_splat: MakeSplat) -> None:
    failure = check_splat(make_splat(10, seed=9))[0]
    assert failure.to_dict() == {"code": failure.code, "message": failure.message}


def test_real_file_passes_every_gate(real_ply_bytes: bytes) -> None:
    assert check_splat(Splat.from_ply_bytes(real_ply_bytes)) == []


@pytest.mark.parametrize("min_gaussians", [0, 1])
def test_count_floor_of_zero_or_one(min_gaussians: int) -> None:
    # The count gate never divides by the count: an empty splat is checkable at any floor.
    failures = check_splat(Splat.empty(0), min_gaussians=min_gaussians)
    assert ("too_few_gaussians" in codes(failures)) == (min_gaussians > 0)
