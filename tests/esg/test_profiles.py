"""Profiles: what a cluster can run, priced options, and fitting tables from a few points."""

from __future__ import annotations

import math
import random

import pytest

from esg.model import Config, Profile
from esg.pricing import Pricing
from esg.profiles import Capacity, fit_cpu_curve, fit_gpu_line, fit_profile, priced_options
from esg.testing import node


def test_capacity_knows_mig_sizes_mps_shares_and_cpu_only_nodes() -> None:
    assert Capacity.of([node("a", vcpu=16)]) == Capacity(16, frozenset({0, 1, 2, 3, 4, 7}))
    assert Capacity.of([node("a", vcpu=8, mode="mps")]).vgpu_sizes == frozenset(range(8))
    assert Capacity.of([node("a", vcpu=4, gpu_units=())]) == Capacity(4, frozenset({0}))
    # Unhealthy nodes do not count.
    assert Capacity.of([node("a", vcpu=4, gpu_units=()), node("b", vcpu=32, healthy=False)]) == (
        Capacity(4, frozenset({0}))
    )


def test_priced_options_keep_what_fits_and_price_it() -> None:
    profile = Profile(
        "f", {Config(1, 2): 100.0, Config(4, 2): 200.0, Config(1, 1, 5): 10.0, Config(1, 32): 50.0}
    )
    options = priced_options(profile, Pricing(1.0, 10.0), Capacity(16, frozenset({0, 1, 7})), 2)
    # (4,2,0): batch 4 > 2; (1,1,5): 5 units is no MIG size; (1,32,0): 32 vCPUs > 16.
    assert [o.config for o in options] == [Config(1, 2)]
    assert options[0].cost == pytest.approx(2 * 0.1)  # 2 vCPUs * $1 * 0.1 s / batch 1


# HarmonyBatch's fitted VGG-19 (CPU average, b = 1): alpha 1.826 s, beta 0.528, gamma 0.180 s;
# GPU: xi1 = 1.68 ms per request, xi2 = 2.11 ms (its conf/model.json, in ms here).
ALPHA, BETA, GAMMA = 1826.0, 0.528, 180.0
XI1, XI2 = 1.68, 2.11


def _truth(c: Config) -> float:
    if c.vgpu:
        return 7 / c.vgpu * (XI1 * c.batch + XI2)
    return (ALPHA * math.exp(-c.vcpu / BETA) + GAMMA) * (1 + 0.8 * (c.batch - 1))


def test_the_forms_are_recovered_from_exact_points() -> None:
    alpha, beta, gamma = fit_cpu_curve([1, 2, 4, 8], [_truth(Config(1, v)) for v in (1, 2, 4, 8)])
    assert (alpha, beta, gamma) == pytest.approx((ALPHA, BETA, GAMMA), rel=1e-6)
    xi1, xi2 = fit_gpu_line(
        [1, 8, 4], [7, 7, 1], [_truth(Config(b, 1, g)) for b, g in ((1, 7), (8, 7), (4, 1))]
    )
    assert (xi1, xi2) == pytest.approx((XI1, XI2), rel=1e-9)


def test_a_full_grid_from_ten_points_with_the_error_reported() -> None:
    grid = [Config(b, v, g) for b in (1, 2, 4, 8) for v in (1, 2, 4, 8) for g in (0, 1, 2, 3, 4, 7)]
    points = [Config(1, v) for v in (1, 2, 4, 8)] + [Config(8, v) for v in (1, 2, 8)]
    points += [Config(1, 1, 7), Config(8, 1, 7), Config(4, 1, 1)]
    rng = random.Random(5)
    measured = {c: _truth(c) * (1 + rng.uniform(-0.03, 0.03)) for c in points}
    profile, report = fit_profile("vgg", measured, grid, version=3)
    assert set(profile.latency_ms) == set(grid) and profile.version == 3
    assert all(profile.latency_ms[c] == measured[c] for c in points)  # measurements are kept
    assert report.points == 10
    assert 0 < report.mean_rel_error <= report.max_rel_error < 0.05  # ±3% noise
    # Off the measured points, on batch sizes 1 and 8 and the GPU line, within ~10% of truth.
    for c in grid:
        if c.batch in (1, 8) or c.vgpu:
            assert profile.latency_ms[c] == pytest.approx(_truth(c), rel=0.1), c
    # Batch 2 and 4 are interpolated between the fitted 1 and 8: truth is linear in b here.
    assert profile.latency_ms[Config(4, 2)] == pytest.approx(_truth(Config(4, 2)), rel=0.1)


@pytest.mark.parametrize(
    ("measured", "message"),
    [
        ({Config(1, 1): 10.0, Config(1, 2): 8.0}, "3 vCPU levels"),
        (
            {Config(1, 1): 10.0, Config(1, 2): 8.0, Config(1, 4): 7.0, Config(1, 1, 7): 1.0},
            "GPU points",
        ),
    ],
)
def test_fitting_says_what_points_are_missing(measured: dict[Config, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_profile("f", measured, [Config(2, 1), Config(2, 1, 1)])
