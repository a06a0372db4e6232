"""The online refinement rule: running mean, then EWMA; publish only meaningful changes."""

from __future__ import annotations

import math

import pytest

from esg.model import Config
from esg.refine import Point, RefinePolicy, observe, planning_table, slowdown


def feed(point: Point | None, samples: list[float], policy: RefinePolicy) -> tuple[Point, int]:
    changes = 0
    for sample in samples:
        refined = observe(point, sample, policy)
        point, changes = refined.point, changes + refined.changed
    assert point is not None
    return point, changes


def test_first_sample_makes_a_measured_point_and_replaces_a_fit() -> None:
    fresh = observe(None, 4.0)
    assert fresh.changed and fresh.point == Point(4.0, 0.0, 1, False, 4.0, executions=1)
    fitted = observe(Point.fit(9.0), 4.0)
    assert fitted.changed and not fitted.point.fitted and fitted.point.published_ms == 4.0


def test_running_mean_within_the_window_then_ewma() -> None:
    policy = RefinePolicy(window=4, rel_change=0.0, abs_change_ms=0.0, z=0.0)
    # samples 1, 2, 3, 4: a plain mean (2.5) and population variance (1.25)
    point, _ = feed(None, [1.0, 2.0, 3.0, 4.0], policy)
    assert point.count == 4
    assert point.mean_ms == pytest.approx(2.5)
    assert point.var_ms2 == pytest.approx(1.25)
    # the fifth sample weighs 1/4: 2.5 + (6.5 - 2.5) / 4 = 3.5;
    # variance (1 - 1/4) * (1.25 + 1/4 * 4^2) = 0.75 * 5.25 = 3.9375
    point, _ = feed(point, [6.5], policy)
    assert point.mean_ms == pytest.approx(3.5)
    assert point.var_ms2 == pytest.approx(3.9375)


def test_ewma_forgets_an_old_speed() -> None:
    policy = RefinePolicy(window=10)
    point, _ = feed(None, [10.0] * 10, policy)
    point, changes = feed(point, [5.0] * 60, policy)
    # (1 - 1/10)^60 = 0.0018 of the old 5 ms gap is left
    assert point.mean_ms == pytest.approx(5.0 + 5.0 * 0.9**60)
    assert point.published_ms == pytest.approx(5.0, rel=0.06)
    assert 1 <= changes < 20  # stepwise, each step past 5 %, not one bump a sample


ONLY_REL = RefinePolicy(rel_change=0.05, abs_change_ms=0.0, z=0.0)
ONLY_ABS = RefinePolicy(rel_change=0.0, abs_change_ms=0.02, z=0.0)


@pytest.mark.parametrize(
    ("policy", "samples", "changed"),
    [
        (ONLY_REL, [10.0, 10.8], False),  # mean 10.4 is 4 % from 10
        (ONLY_REL, [10.0, 11.2], True),  # mean 10.6 is 6 % from 10
        (ONLY_ABS, [0.010, 0.030], False),  # mean 0.020 is 0.010 ms from 0.010
        (ONLY_ABS, [0.010, 0.100], True),  # mean 0.055 is 0.045 ms from 0.010
    ],
)
def test_relative_and_absolute_thresholds(
    policy: RefinePolicy, samples: list[float], changed: bool
) -> None:
    first = observe(None, samples[0], policy)
    second = observe(first.point, samples[1], policy)
    assert second.changed is changed
    expected = second.point.mean_ms if changed else samples[0]
    assert second.point.published_ms == pytest.approx(expected)


def test_standard_error_threshold() -> None:
    """10 ms measured 3 times (std 0.1), then executions of 12 ms, only the z rule on:
    n=4: mean 10.5, var 0.7575, 2·sqrt(var/4) = 0.870 > 0.5 moved: kept (but the first
    execution is a change all the same: the point is no longer scaled, see below);
    n=5: mean 10.8, var 0.966, 2·sqrt(var/5) = 0.879 > 0.8: kept;
    n=6: mean 11.0, var 1.005, 2·sqrt(var/6) = 0.819 < 1.0: published."""
    policy = RefinePolicy(rel_change=0.0, abs_change_ms=0.0, z=2.0)
    point = Point.measured(10.0, 0.1, 3)
    seen, published = [], []
    for _ in range(3):
        refined = observe(point, 12.0, policy)
        point = refined.point
        seen.append(refined.changed)
        published.append(point.published_ms)
    assert seen == [True, False, True]
    assert published == [10.0, 10.0, pytest.approx(11.0)]
    assert point.executions == 3 and point.profiled_ms == 10.0


def test_noise_alone_does_not_republish() -> None:
    """A jittery point (alternating 1 and 3 ms, mean 2, standard deviation 1) settles: the
    estimate's swings stay within two standard errors, so the version stops moving."""
    policy = RefinePolicy(window=20)
    point, _ = feed(None, [1.0, 3.0] * 20, policy)
    _, changes = feed(point, [1.0, 3.0] * 200, policy)
    assert changes == 0
    assert math.isclose(point.std_ms, 1.0, rel_tol=0.1)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="> 0"):
        observe(None, 0.0)
    with pytest.raises(ValueError, match="window"):
        RefinePolicy(window=0)


def test_what_only_the_profiler_timed_is_planned_at_the_functions_slowdown_under_load() -> None:
    """Timed alone (3 samples) at 1, 2 and 4 ms; under load the first two ran 3 times at 3
    and 6 ms, so their running means are (3·1 + 3·3) / 6 = 2 and 4 ms: ×2 each. A third
    configuration only ever ran under load (no ratio), one is fitted."""
    policy = RefinePolicy(window=20, rel_change=0.0, abs_change_ms=0.0, z=0.0)
    points = {Config(1, 1): Point.measured(1.0, 0.0, 3), Config(2, 1): Point.measured(2.0, 0.0, 3),
              Config(4, 1): Point.measured(4.0, 0.0, 3), Config(8, 1): Point.fit(7.0)}
    assert slowdown(points) == 1.0  # nothing ran yet: the profile as measured
    assert planning_table(points) == {c: p.published_ms for c, p in points.items()}
    for config, ms in ((Config(1, 1), 3.0), (Config(2, 1), 6.0)):
        point = points[config]
        for _ in range(3):
            point = observe(point, ms, policy).point
        points[config] = point
    points[Config(1, 2)] = observe(None, 0.9, policy).point
    assert slowdown(points) == pytest.approx(2.0)
    table = planning_table(points)
    assert table[Config(1, 1)] == pytest.approx(2.0) and table[Config(2, 1)] == pytest.approx(4.0)
    assert table[Config(1, 2)] == 0.9  # ran: as published
    assert table[Config(4, 1)] == pytest.approx(8.0)  # timed alone: ×2
    assert table[Config(8, 1)] == pytest.approx(14.0)  # fitted from quiet points: ×2


def test_a_gpu_slice_is_scaled_by_what_gpu_slices_did_not_by_the_cores() -> None:
    """Shared cores slow the CPU points 2×; that says nothing about a slice of a GPU, whose
    points stay as profiled until a GPU batch runs."""
    policy = RefinePolicy(rel_change=0.0, abs_change_ms=0.0, z=0.0)
    cpu, gpu, other_gpu = Config(1, 1), Config(1, 1, 1), Config(4, 1, 2)
    points = {cpu: Point.measured(4.0, 0.0, 1), gpu: Point.measured(1.0, 0.0, 1),
              other_gpu: Point.fit(2.0), Config(4, 1): Point.fit(10.0)}
    points[cpu] = observe(points[cpu], 12.0, policy).point  # (4 + 12) / 2 = 8: ×2
    assert slowdown(points) == 2.0 and slowdown(points, on_gpu=True) == 1.0
    assert planning_table(points)[Config(4, 1)] == 20.0
    assert planning_table(points)[other_gpu] == 2.0
    points[gpu] = observe(points[gpu], 1.5, policy).point  # (1 + 1.5) / 2: ×1.25
    assert planning_table(points)[other_gpu] == pytest.approx(2.5)
