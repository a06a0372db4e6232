"""Filling unmeasured configurations: esg's forms with 3+ vCPU levels, batch lines below."""

from __future__ import annotations

import math

import pytest

from esg.model import Config
from faasd.profiles.fitting import fill


def test_two_vcpu_levels_use_batch_lines() -> None:
    # 1 vCPU: L = 2b + 1; 2 vCPUs: L = 1.5b + 0.5 (exact lines through the measured points)
    measured = {Config(b, 1): 2.0 * b + 1 for b in (1, 4)}
    measured |= {Config(b, 2): 1.5 * b + 0.5 for b in (1, 4)}
    grid = [Config(b, v) for b in (1, 2, 3, 4, 8) for v in (1, 2)]
    filled = fill("f", measured, grid)
    assert set(filled) == {Config(b, v) for b in (2, 3, 8) for v in (1, 2)}
    assert filled[Config(2, 1)] == pytest.approx(5.0)
    assert filled[Config(8, 1)] == pytest.approx(17.0)  # extrapolated
    assert filled[Config(3, 2)] == pytest.approx(5.0)


def test_a_level_with_one_batch_takes_its_neighbours_shape() -> None:
    # 1 vCPU: L = 2b + 1 (3 at b=1, 9 at b=4); 2 vCPUs measured at b=1 only: 1.5.
    # Shape of the 1-vCPU line scaled by 1.5 / 3: at b = 4, 9 * 0.5 = 4.5
    measured = {Config(1, 1): 3.0, Config(4, 1): 9.0, Config(1, 2): 1.5}
    assert fill("f", measured, [Config(4, 2)]) == {Config(4, 2): pytest.approx(4.5)}


def test_three_vcpu_levels_use_the_exp_decay_form() -> None:
    # L(c) = 8 exp(-c / 2) + 1 at c = 1, 2, 4: esg.profiles.fit_cpu_curve recovers it
    def truth(c: int) -> float:
        return 8 * math.exp(-c / 2) + 1

    measured = {Config(1, c): truth(c) for c in (1, 2, 4)}
    filled = fill("f", measured, [Config(1, c) for c in (1, 2, 3, 4, 8)])
    assert filled[Config(1, 3)] == pytest.approx(truth(3), rel=1e-3)
    assert filled[Config(1, 8)] == pytest.approx(truth(8), rel=1e-3)


def test_values_never_fall_below_the_floor() -> None:
    # steeply falling with the batch: the line crosses zero by b = 8; the floor is 5 % of 0.2
    measured = {Config(1, 1): 1.0, Config(2, 1): 0.2}
    assert fill("f", measured, [Config(8, 1)])[Config(8, 1)] == pytest.approx(0.01)


def test_gpu_points_fill_other_slices() -> None:
    # full-GPU line ξ1 = 1, ξ2 = 2: on 7 units L = b + 2; on 1 unit 7x that
    measured = {Config(1, 1): 5.0, Config(2, 1): 9.0, Config(1, 1, 7): 3.0,
                Config(2, 1, 7): 4.0}
    filled = fill("f", measured, [Config(1, 1, 1), Config(4, 1, 7)])
    assert filled[Config(1, 1, 1)] == pytest.approx(21.0)
    assert filled[Config(4, 1, 7)] == pytest.approx(6.0)


def test_what_cannot_be_fitted_says_what_to_measure() -> None:
    with pytest.raises(ValueError, match="2 batch sizes"):
        fill("f", {Config(1, 1): 1.0}, [Config(2, 1)])
    with pytest.raises(ValueError, match="no measured point"):
        fill("f", {}, [Config(1, 1)])
    assert fill("f", {Config(1, 1): 1.0}, [Config(1, 1)]) == {}
