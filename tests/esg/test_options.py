"""prepare_options: the O(n log n) K-dominance filter and vectorised exact integers return
exactly what the 256 × 256 dominance matrix and per-value `as_integer_ratio` did."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esg.group import pareto_sum
from esg.model import Config
from esg.options import (
    Option,
    PreparedOptions,
    common_scale,
    exact_integers,
    prepare_options,
    scaled,
)
from esg.testing import options_of, synthetic_profile

EXAMPLES = int(os.environ.get("ESG_HYPOTHESIS_EXAMPLES", "200"))


def matrix_prepare(options: Sequence[Option], k: int) -> PreparedOptions:
    """The previous implementation, kept as the reference: a sort by key, then the n × n
    dominance matrix, then per-value exact integers and a Python Pareto walk."""
    rank_of = {c: i for i, c in enumerate(sorted(o.config for o in options))}
    ordered = sorted(options, key=lambda o: (o.cost, o.latency_ms, o.config))
    if len(ordered) > k:
        cost = np.array([o.cost for o in ordered])
        lat = np.array([o.latency_ms for o in ordered])
        rank = np.array([rank_of[o.config] for o in ordered])
        dominates = (
            (cost[:, None] <= cost[None, :])
            & (lat[:, None] <= lat[None, :])
            & ((cost[:, None] < cost[None, :]) | (rank[:, None] < rank[None, :]))
        )
        keep = dominates.sum(axis=0) < k
        ordered = [o for o, kept in zip(ordered, keep.tolist(), strict=True) if kept]
    cost_scale = common_scale(o.cost for o in ordered)
    lat_scale = common_scale(o.latency_ms for o in ordered)
    pareto: list[int] = []
    for i in sorted(range(len(ordered)), key=lambda i: (ordered[i].latency_ms, ordered[i].cost)):
        if not pareto or ordered[i].cost < ordered[pareto[-1]].cost:
            pareto.append(i)
    return PreparedOptions(
        options=tuple(ordered),
        ranks=tuple(rank_of[o.config] for o in ordered),
        considered=len(options),
        k=k,
        cost=tuple(scaled(o.cost, cost_scale) for o in ordered),
        lat=tuple(scaled(o.latency_ms, lat_scale) for o in ordered),
        cost_scale=cost_scale,
        lat_scale=lat_scale,
        pareto=tuple(pareto),
    )


CONFIGS = [Config(b, v, g) for b in (1, 2, 4) for v in (1, 2, 3, 4) for g in (0, 1, 2, 3, 7)]
# Few distinct values, so that equal costs, equal latencies and both at once are frequent.
VALUES = st.sampled_from([0.0, 0.1, 0.2, 0.3, 1.0, 1.5, 2.0, 3.0, 5.0, 1e-9, 7.25])


@st.composite
def tables(draw: st.DrawFn) -> list[Option]:
    configs = draw(st.lists(st.sampled_from(CONFIGS), min_size=1, max_size=40, unique=True))
    return [Option(c, draw(VALUES), draw(VALUES)) for c in configs]


@settings(max_examples=EXAMPLES, deadline=None)
@given(tables(), st.integers(1, 10))
def test_the_filter_keeps_exactly_what_the_dominance_matrix_kept(
    options: list[Option], k: int
) -> None:
    assert prepare_options(options, k) == matrix_prepare(options, k)


@pytest.mark.parametrize("k", [1, 2, 8, 32])
def test_full_surfaces_prepare_as_before(k: int) -> None:
    rng = random.Random(k)
    for name in ("a", "b", "c"):
        profile = synthetic_profile(
            name, rng.uniform(10.0, 200.0), rng=rng, noise=0.05, gpu_speedup=6.0
        )
        options = options_of(profile)
        rng.shuffle(options)  # input order must not matter
        assert prepare_options(options, k) == matrix_prepare(options, k)


def test_ties_on_cost_and_latency_are_broken_by_config() -> None:
    # Three options with the same cost and latency: with K = 1 only the smallest config
    # survives (it dominates both others), with K = 2 the two smallest.
    same = [Option(Config(1, 4), 5.0, 1.0), Option(Config(1, 1), 5.0, 1.0),
            Option(Config(1, 2), 5.0, 1.0)]
    assert [o.config for o in prepare_options(same, 1).options] == [Config(1, 1)]
    assert [o.config for o in prepare_options(same, 2).options] == [Config(1, 1), Config(1, 2)]


FLOATS = st.one_of(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e300, 0.1, 1.0]),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=20))
def test_exact_integers_match_per_value_ratios(values: list[float]) -> None:
    ints, scale = exact_integers(np.array(values))
    assert scale == common_scale(values)
    assert ints == tuple(scaled(v, scale) for v in values)


def test_values_that_are_not_binary_floats_are_refused() -> None:
    exact = Option(Config(1, 1), 2**53, 1.0)  # an int float64 holds exactly: fine
    assert prepare_options([exact], 1).lat == (2**53,)
    with pytest.raises(ValueError, match="not exactly a binary float"):
        prepare_options([Option(Config(1, 1), 2**53 + 1, 1.0)], 1)
    with pytest.raises(ValueError, match="non-finite"):
        prepare_options([Option(Config(1, 1), 1.0, math.inf)], 1)


# ---------------------------------------------------------------- fronts of chains


def exact_front(points: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    lats: list[int] = []
    costs: list[int] = []
    for lat, cost in sorted(points):
        if not costs or cost < costs[-1]:
            lats.append(lat)
            costs.append(cost)
    return lats, costs


# Integers around 2**60 that differ in their last bits: float64 cannot tell them apart, so
# the float prefilter sees ties that are not ties.
BIG = 2**60
NEAR = st.sampled_from([0, 1, 2, 3, 100, 127, 129, 200, 2**20, 2**40, 2**52, 2**53])
INTS = st.one_of(NEAR.map(lambda d: BIG + d), NEAR, st.integers(0, 2**70), st.just(2**1100))


@st.composite
def fronts(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    points = draw(st.lists(st.tuples(INTS, INTS), min_size=1, max_size=12))
    return exact_front(points)


@settings(max_examples=EXAMPLES, deadline=None)
@given(fronts(), fronts())
def test_the_front_of_a_sum_is_exact(
    a: tuple[list[int], list[int]], b: tuple[list[int], list[int]]
) -> None:
    every = [
        (la + lb, ca + cb)
        for la, ca in zip(*a, strict=True)
        for lb, cb in zip(*b, strict=True)
    ]
    assert pareto_sum(a, b) == exact_front(every)


def test_a_point_floats_would_drop_stays_on_the_front() -> None:
    # Around 2**60 a float is a multiple of 256. p = a2 + b2 = (2**60 + 200, 2**60 + 200)
    # beats q = a1 + b1 = (2**60 + 227, 2**60 + 227) exactly, but in floats q rounds to
    # (2**60, 2**60) and p to (2**60 + 256, 2**60 + 256): without the margin, p would go.
    a = ([BIG + 127, BIG + 200], [BIG + 127, BIG])
    b = ([0, 100], [200, 100])
    front = ([BIG + 127, BIG + 200, BIG + 300], [BIG + 327, BIG + 200, BIG + 100])
    assert pareto_sum(a, b) == front
