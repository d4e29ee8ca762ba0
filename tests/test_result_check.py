"""check_result: what the front end serves for the buffer it read a worker's PLY into."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from diagnostics.splat import Splat
from generation.front.result_check import check_result
from generation.settings import FrontSettings

MakeSplat = Callable[..., Splat]


def test_a_faint_splat_is_shifted_inside_the_owned_buffer(make_splat: MakeSplat) -> None:
    ply = make_splat(9000, seed=5, opacity_mean=-9.0, opacity_std=2.5).to_ply_bytes()
    raw = Splat.from_ply_bytes(ply)["opacity"].astype(np.float64)
    owned = memoryview(bytearray(ply))
    result = check_result(owned, FrontSettings())
    assert result.ok and result.summary()["fixed"] is True
    # Served from the very buffer it was read into: no second copy of the splat.
    assert result.ply is owned
    served = Splat.from_ply_bytes(bytes(result.ply))
    after = served["opacity"].astype(np.float64)
    assert after.mean() == pytest.approx(result.fix.target, abs=1e-4)  # type: ignore[union-attr]
    assert after.std() == pytest.approx(raw.std(), rel=1e-5)
    original = Splat.from_ply_bytes(ply)
    for name in original.names:
        if name != "opacity":
            assert np.array_equal(original[name], served[name])


def test_read_only_bytes_are_never_written(make_splat: MakeSplat) -> None:
    ply = make_splat(9000, seed=6, opacity_mean=-9.0, opacity_std=2.5).to_ply_bytes()
    frozen = memoryview(ply)
    result = check_result(frozen, FrontSettings())
    assert result.ok and result.summary()["fixed"] is True
    assert result.ply is not frozen and bytes(frozen) == ply
    assert Splat.from_ply_bytes(result.ply)["opacity"].astype(np.float64).mean() > -5.0


def test_a_healthy_splat_is_served_as_the_workers_bytes(make_splat: MakeSplat) -> None:
    ply = make_splat(9000, seed=7).to_ply_bytes()
    owned = memoryview(bytearray(ply))
    result = check_result(owned, FrontSettings())
    assert result.ok and result.summary()["fixed"] is False
    assert result.ply is owned and bytes(owned) == ply
