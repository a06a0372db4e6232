"""ESG_1Q: hand-worked tables, then the property that matters: it equals brute force."""

from __future__ import annotations

import itertools
import math
import os
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esg.cache import PlanCache
from esg.model import Config
from esg.search import Option, budget_units, compile_group, esg_1q, search
from esg.testing import brute_force, options_of, synthetic_profile

C1, C2, C4 = Config(1, 1), Config(1, 2), Config(1, 4)
G1 = Config(2, 1, 1)

# A chain a -> b. Every plan (cost, latency):
#   a=C1 b=C1: 1+1=2, 10+20=30      a=C2 b=C1: 2+1=3, 6+20=26
#   a=C1 b=G1: 1+4=5, 10+5=15       a=C2 b=G1: 2+4=6, 6+5=11
CHAIN = {
    "a": [Option(C1, 10.0, 1.0), Option(C2, 6.0, 2.0)],
    "b": [Option(C1, 20.0, 1.0), Option(G1, 5.0, 4.0)],
}


@pytest.mark.parametrize(
    ("budget_ms", "k", "expected"),
    [
        # Everything fits: cheapest first.
        (
            30.0,
            4,
            [
                (2.0, 30.0, "C1", "C1"),
                (3.0, 26.0, "C2", "C1"),
                (5.0, 15.0, "C1", "G1"),
                (6.0, 11.0, "C2", "G1"),
            ],
        ),
        # 26 ms: the 30 ms plan is cut by the time blade; 26 <= 26 is feasible.
        (26.0, 3, [(3.0, 26.0, "C2", "C1"), (5.0, 15.0, "C1", "G1"), (6.0, 11.0, "C2", "G1")]),
        # K = 1 keeps only the cheapest feasible plan.
        (29.9, 1, [(3.0, 26.0, "C2", "C1")]),
        # 11 ms: only the fastest plan fits.
        (11.0, 8, [(6.0, 11.0, "C2", "G1")]),
    ],
)
def test_chain_top_k_by_cost(
    budget_ms: float, k: int, expected: list[tuple[float, float, str, str]]
) -> None:
    names = {C1: "C1", C2: "C2", G1: "G1"}
    result = esg_1q(["a", "b"], [("a", "b")], CHAIN, budget_ms, k)
    got = [
        (p.cost, p.latency_ms, names[p.configs["a"]], names[p.configs["b"]]) for p in result.plans
    ]
    assert got == expected
    assert all(p.feasible for p in result.plans)


def test_nothing_feasible_returns_the_fastest_plans_marked_infeasible() -> None:
    # 10 ms < 11 ms, the fastest plan: ranked by latency, then cost.
    result = esg_1q(["a", "b"], [("a", "b")], CHAIN, 10.0, 3)
    assert not result.feasible
    assert [(p.latency_ms, p.cost) for p in result.plans] == [(11.0, 6.0), (15.0, 5.0), (26.0, 3.0)]
    assert not any(p.feasible for p in result.plans)


# Fork/join s -> {x, y} -> j; latency = s + max(x, y) + j, cost = sum:
#   x=30/$1 y=20/$1: $4, 5+30+5=40    x=30/$1 y=12/$2: $5, 40
#   x=10/$3 y=20/$1: $6, 5+20+5=30    x=10/$3 y=12/$2: $7, 5+12+5=22
FORK = {
    "s": [Option(C1, 5.0, 1.0)],
    "x": [Option(C1, 30.0, 1.0), Option(C4, 10.0, 3.0)],
    "y": [Option(C1, 20.0, 1.0), Option(C2, 12.0, 2.0)],
    "j": [Option(C1, 5.0, 1.0)],
}
FORK_EDGES = [("s", "x"), ("s", "y"), ("x", "j"), ("y", "j")]


@pytest.mark.parametrize(
    ("budget_ms", "expected"),
    [
        (40.0, [(4.0, 40.0), (5.0, 40.0)]),  # a chain would need 60 ms: the branches overlap
        (35.0, [(6.0, 30.0), (7.0, 22.0)]),
        (25.0, [(7.0, 22.0)]),
    ],
)
def test_parallel_branches_cost_the_sum_and_take_the_critical_path(
    budget_ms: float, expected: list[tuple[float, float]]
) -> None:
    result = esg_1q(list(FORK), FORK_EDGES, FORK, budget_ms, 2)
    assert [(p.cost, p.latency_ms) for p in result.plans] == expected


def test_ties_break_by_latency_then_configs() -> None:
    fast_big, slow_small, b2, b3 = Config(2, 1), Config(1, 1), Config(1, 2), Config(1, 3)
    options = {
        "a": [Option(slow_small, 8.0, 1.0), Option(fast_big, 5.0, 1.0)],
        "b": [Option(b3, 10.0, 1.0), Option(b2, 10.0, 1.0)],
    }
    # Chain a -> b: every plan costs $2; a=fast_big takes 15 ms, a=slow_small 18 ms, so the
    # faster one wins although its config compares larger; b's two options tie on both, so the
    # smaller config wins.
    chain = esg_1q(["a", "b"], [("a", "b")], options, math.inf, 4)
    assert [tuple(p.configs.values()) for p in chain.plans] == [
        (fast_big, b2),
        (fast_big, b3),
        (slow_small, b2),
        (slow_small, b3),
    ]
    # In parallel (no edge) every plan takes max(a, 10) = 10 ms: now only the configs decide,
    # and slow_small (1,1,0) < fast_big (2,1,0).
    parallel = esg_1q(["a", "b"], [], options, math.inf, 4)
    assert [tuple(p.configs.values()) for p in parallel.plans] == [
        (slow_small, b2),
        (slow_small, b3),
        (fast_big, b2),
        (fast_big, b3),
    ]


def test_costs_add_exactly_not_in_floating_point() -> None:
    # In floats 1.0 + 1e-17 == 1.0 + 0.0, a tie the config order would break in favour of C1.
    # Exactly, b=C2 ($0) makes the cheaper plan, and brute force in exact arithmetic agrees.
    options = {"a": [Option(C1, 1.0, 1.0)], "b": [Option(C1, 1.0, 1e-17), Option(C2, 1.0, 0.0)]}
    plans = esg_1q(["a", "b"], [], options, 5.0, 2).plans
    assert [p.configs["b"] for p in plans] == [C2, C1]
    assert [p.cost for p in plans] == [1.0, 1.0]  # the exact sums, each rounded once
    assert plans == tuple(brute_force(["a", "b"], [], options, 5.0, 2))


def test_options_dominated_k_times_are_dropped_at_compile_time() -> None:
    # With K = 1, (1,4): 9 ms $3 is dominated by (1,2): 6 ms $2 and is dropped; nothing
    # dominates (1,1) (cheapest) or (1,2) (fastest).
    layer = [Option(C1, 10.0, 1.0), Option(C2, 6.0, 2.0), Option(C4, 9.0, 3.0)]
    group = compile_group(["a"], [], {"a": layer}, k=1)
    assert [o.config for o in group.layers[0].options] == [C1, C2]
    # With K = 2 one dominator is not enough: (1,4) stays.
    assert len(compile_group(["a"], [], {"a": layer}, k=2).layers[0].options) == 3


def test_a_realistic_group_expands_a_tiny_fraction_of_the_space() -> None:
    profiles = [synthetic_profile(f, base) for f, base in (("a", 40.0), ("b", 120.0), ("c", 25.0))]
    options = {p.function: options_of(p) for p in profiles}
    group = compile_group(["a", "b", "c"], [("a", "b"), ("b", "c")], options, 8)
    assert group.considered == 3 * 256
    for factor in (1.5, 3.0, 10.0):
        result = search(group, group.fastest / group.lat_scale * factor)
        assert result.feasible
        assert len(result.plans) == 8
        assert result.expanded < 2000  # of 16.7 million complete plans


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be >= 1"),
        ({"options": {"a": []}}, "no options"),
        ({"options": {"a": [Option(C1, 1.0, 1.0), Option(C1, 2.0, 1.0)]}}, "twice"),
        ({"options": {"a": [Option(C1, math.nan, 1.0)]}}, "non-finite"),
        ({"options": {"a": [Option(C1, 1.0, -1.0)]}}, "negative"),
        ({"edges": [("a", "z")]}, "leaves the group"),
    ],
)
def test_bad_groups_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "functions": ["a"],
        "edges": [],
        "options": {"a": [Option(C1, 1.0, 1.0)]},
        "k": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        compile_group(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties

#: Examples per property; raise it for a long soak, e.g. ESG_HYPOTHESIS_EXAMPLES=5000.
EXAMPLES = int(os.environ.get("ESG_HYPOTHESIS_EXAMPLES", "200"))

# Few distinct values, so that ties (equal costs, equal latencies, equal critical paths) are
# frequent; 0.1/0.2/0.3 exercise exact addition.
VALUES = st.sampled_from([0.0, 0.1, 0.2, 0.3, 1.0, 1.5, 2.0, 3.0, 5.0])
CONFIGS = [Config(b, v, g) for b in (1, 2) for v in (1, 2, 4) for g in (0, 1, 3)]


@st.composite
def groups(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]], dict[str, list[Option]]]:
    n = draw(st.integers(1, 4))
    names = [f"f{i}" for i in range(n)]
    edges = [(names[i], names[j]) for i in range(n) for j in range(i + 1, n) if draw(st.booleans())]
    options = {}
    for name in names:
        configs = draw(st.lists(st.sampled_from(CONFIGS), min_size=1, max_size=6, unique=True))
        options[name] = [Option(c, draw(VALUES), draw(VALUES)) for c in configs]
    order = draw(st.permutations(names))
    return list(order), edges, options


BUDGETS = st.one_of(VALUES, st.floats(-1.0, 25.0), st.just(math.inf))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(group=groups(), budget_ms=BUDGETS, k=st.integers(1, 6))
def test_esg_1q_equals_brute_force(
    group: tuple[list[str], list[tuple[str, str]], dict[str, list[Option]]],
    budget_ms: float,
    k: int,
) -> None:
    names, edges, options = group
    assert esg_1q(names, edges, options, budget_ms, k).plans == tuple(
        brute_force(names, edges, options, budget_ms, k)
    )


@st.composite
def chains(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]], dict[str, list[Option]]]:
    names, _, options = draw(groups())
    return names, list(itertools.pairwise(names)), options


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(group=chains(), budget_ms=BUDGETS, k=st.integers(1, 6))
def test_esg_1q_equals_brute_force_on_chains(
    group: tuple[list[str], list[tuple[str, str]], dict[str, list[Option]]],
    budget_ms: float,
    k: int,
) -> None:
    names, edges, options = group
    assert esg_1q(names, edges, options, budget_ms, k).plans == tuple(
        brute_force(names, edges, options, budget_ms, k)
    )


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(group=groups(), budgets=st.lists(BUDGETS, min_size=1, max_size=12), k=st.integers(1, 4))
def test_the_plan_cache_never_changes_an_answer(
    group: tuple[list[str], list[tuple[str, str]], dict[str, list[Option]]],
    budgets: list[float],
    k: int,
) -> None:
    names, edges, options = group
    compiled = compile_group(names, edges, options, k)
    cache = PlanCache(answers_per_group=4)
    for budget in budgets:
        cached = cache.search("g", lambda: compiled, budget)
        assert cached.plans == search(compiled, budget).plans
    assert cache.hits + cache.misses == len(budgets)


def test_the_plan_cache_hits_for_nearby_budgets() -> None:
    compiled = compile_group(["a", "b"], [("a", "b")], CHAIN, 3)
    cache = PlanCache()
    first = cache.search("chain", lambda: compiled, 26.0)
    # Valid from 26 ms (slowest plan returned) up to 30 ms (the bound the time blade cut).
    for budget in (26.0, 27.5, 29.999):
        assert cache.search("chain", lambda: compiled, budget) is first
    assert cache.search("chain", lambda: compiled, 30.0).plans[0].cost == 2.0
    assert (cache.hits, cache.misses) == (3, 2)


SHAPES = {
    "chain": [("f0", "f1"), ("f1", "f2")],
    "fork": [("f0", "f1"), ("f0", "f2")],
    "join": [("f0", "f2"), ("f1", "f2")],
    "independent": [],
}


@st.composite
def wide_groups(draw: st.DrawFn) -> tuple[list[tuple[str, str]], dict[str, list[Option]]]:
    """Three functions in one of the four shapes, up to 12 options each (ties frequent)."""
    edges = SHAPES[draw(st.sampled_from(sorted(SHAPES)))]
    pool = [Config(b, v, g) for b in (1, 2, 4) for v in (1, 2, 4, 8) for g in (0, 1)]
    options = {}
    for name in ("f0", "f1", "f2"):
        configs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12, unique=True))
        options[name] = [Option(c, draw(VALUES), draw(VALUES)) for c in configs]
    return edges, options


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(group=wide_groups(), below=st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99]),
       k=st.integers(1, 8))
def test_the_k_fastest_plans_of_an_infeasible_budget_equal_brute_force(
    group: tuple[list[tuple[str, str]], dict[str, list[Option]]], below: float, k: int
) -> None:
    edges, options = group
    compiled = compile_group(["f0", "f1", "f2"], edges, options, k)
    fastest_ms = compiled.fastest / compiled.lat_scale
    budget = fastest_ms * below if fastest_ms > 0 else -1.0
    if budget >= fastest_ms:
        budget = -math.inf
    result = search(compiled, budget)
    assert not result.feasible
    assert result.plans == tuple(brute_force(["f0", "f1", "f2"], edges, options, budget, k))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_k_fastest_search_expands_a_handful_of_nodes(shape: str) -> None:
    # 3 x 256 configurations at 0.9 x the fastest critical path: the K = 8 fastest plans are
    # found after popping at most a few nodes per plan and layer (the old search pushed every
    # child of every node it expanded: up to 2,276 nodes).
    profiles = [synthetic_profile(f, base) for f, base in (("f0", 40.0), ("f1", 120.0),
                                                           ("f2", 25.0))]
    options = {p.function: options_of(p) for p in profiles}
    group = compile_group(["f0", "f1", "f2"], SHAPES[shape], options, 8)
    result = search(group, group.fastest / group.lat_scale * 0.9)
    assert len(result.plans) == 8 and not result.feasible
    assert result.expanded <= 8 * 3 * 8
    latencies = [p.latency_ms for p in result.plans]
    assert latencies == sorted(latencies)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(1, 2**40))
def test_the_budget_in_latency_units_is_the_exact_floor(budget_ms: float, scale: int) -> None:
    group = compile_group(("a",), (), {"a": [Option(C1, 10.0, 1.0)]}, 1)
    group.lat_scale = scale
    assert budget_units(group, budget_ms) == math.floor(Fraction(budget_ms) * scale)


def test_a_plans_key_tells_its_configurations_apart() -> None:
    plans = esg_1q(["a", "b"], [("a", "b")], CHAIN, math.inf, k=4).plans
    assert len({p.key for p in plans}) == 4
    again = esg_1q(["a", "b"], [("a", "b")], CHAIN, 30.0, k=4).plans
    assert [p.key for p in again] == [p.key for p in plans]
