"""Dominator-based SLO distribution: hand-worked splits, then properties on random DAGs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esg.model import Workflow
from esg.slo import pack, segments, sequential_dominators, split_slo


def _workflow(edges: list[tuple[str, str]], slo_s: float = 1.0, extra: str = "") -> Workflow:
    names = sorted({f for e in edges for f in e} | set(extra))
    return Workflow.from_edges("w", names, edges, slo_s)


def test_a_chain_is_cut_into_groups_of_three_with_proportional_budgets() -> None:
    chain = _workflow([("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f")])
    fastest = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 10.0, "e": 20.0, "f": 30.0}
    split = split_slo(chain, fastest, slo_ms=240.0)
    # Every function of a chain dominates the sink; packed three at a time.
    assert split.dominators == ("a", "b", "c", "d", "e", "f")
    assert [g.functions for g in split.groups] == [("a", "b", "c"), ("d", "e", "f")]
    # Weights 10+20+30 = 60 each: 240 * 60/120 = 120 ms per group.
    assert [g.budget_ms for g in split.groups] == [120.0, 120.0]
    assert [g.deadline_ms for g in split.groups] == [120.0, 240.0]
    assert [g.reserved_after_ms for g in split.groups] == [120.0, 0.0]
    assert split.feasible
    # Run time: group 1 done at 100 ms, 20 ms early; d's group gets 240 - 100 = 140 ms.
    assert split.budget_ms("d", elapsed_ms=100.0) == 140.0
    # b, 30 ms in: 120 - 30 = 90 ms for b and c.
    assert split.budget_ms("b", elapsed_ms=30.0) == 90.0
    assert split.remaining("b") == (("b", "c"), (("b", "c"),))


def test_a_fork_join_region_stays_in_one_group() -> None:
    # a -> {b, c} -> d -> e: a, d, e dominate the sink; b and c do not.
    wf = _workflow([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")])
    assert sequential_dominators(wf) == ("a", "d", "e")
    assert segments(wf) == (("a",), ("b", "c", "d"), ("e",))
    fastest = {"a": 10.0, "b": 40.0, "c": 20.0, "d": 10.0, "e": 20.0}
    split = split_slo(wf, fastest, slo_ms=160.0)
    # [a] cannot take the 3-function segment, which fills a group of its own.
    assert [g.functions for g in split.groups] == [("a",), ("b", "c", "d"), ("e",)]
    # Weights: 10; max(40, 20) + 10 = 50 (critical path, not the sum 70); 20. Total 80.
    assert [g.min_latency_ms for g in split.groups] == [10.0, 50.0, 20.0]
    # 160 ms split 10:50:20 -> 20, 100, 40.
    assert [g.budget_ms for g in split.groups] == [20.0, 100.0, 40.0]
    assert [g.deadline_ms for g in split.groups] == [20.0, 120.0, 160.0]
    # b plans itself and its descendant d, not its sibling c.
    assert split.remaining("b") == (("b", "d"), (("b", "d"),))
    assert split.remaining("c") == (("c", "d"), (("c", "d"),))


def test_a_segment_larger_than_the_group_size_is_cut_in_topological_order() -> None:
    wf = _workflow([("a", x) for x in "bcde"] + [(x, "f") for x in "bcde"])
    assert segments(wf) == (("a",), ("b", "c", "d", "e", "f"))
    split = split_slo(wf, dict.fromkeys("abcdef", 10.0), slo_ms=100.0)
    assert [g.functions for g in split.groups] == [("a",), ("b", "c", "d"), ("e", "f")]
    # Edges inside a group only: e -> f is in the last one, b, c, d have none among them.
    assert split.groups[1].edges == ()
    assert split.groups[2].edges == (("e", "f"),)


def test_several_entries_share_the_virtual_source() -> None:
    wf = _workflow([("x", "z"), ("y", "z")])
    assert sequential_dominators(wf) == ("z",)
    assert segments(wf) == (("x", "y", "z"),)


def test_an_infeasible_slo_is_still_shared_and_flagged() -> None:
    chain = _workflow([("a", "b")])
    split = split_slo(chain, {"a": 30.0, "b": 10.0}, slo_ms=20.0)
    assert not split.feasible  # 20 < 30 + 10
    assert [g.budget_ms for g in split.groups] == [20.0]  # one group of both


def test_functions_without_a_fastest_latency_count_as_zero_and_infinite_slos_stay_infinite() -> (
    None
):
    chain = _workflow([("a", "b"), ("b", "c"), ("c", "d")], slo_s=math.inf)
    split = split_slo(chain, {"a": 5.0}, group_size=2)
    assert [g.min_latency_ms for g in split.groups] == [5.0, 0.0]
    assert [g.budget_ms for g in split.groups] == [math.inf, math.inf]
    assert split.budget_ms("c", elapsed_ms=1e9) == math.inf


@pytest.mark.parametrize(
    ("parts", "size", "expected"),
    [
        ([["a"], ["b"], ["c"], ["d"]], 3, [["a", "b", "c"], ["d"]]),
        ([["a"], ["b", "c"]], 2, [["a"], ["b", "c"]]),  # [a] + 2 > 2: b, c start a fresh group
        ([["a", "b", "c", "d", "e"]], 2, [["a", "b"], ["c", "d"], ["e"]]),
        ([["a", "b", "c"], ["d"]], 2, [["a", "b"], ["c", "d"]]),  # the cut's tail takes d
    ],
)
def test_pack(parts: list[list[str]], size: int, expected: list[list[str]]) -> None:
    assert pack(parts, size) == expected


@st.composite
def workflows(draw: st.DrawFn) -> tuple[Workflow, dict[str, float]]:
    n = draw(st.integers(1, 8))
    names = [f"f{i}" for i in range(n)]
    edges = [(names[i], names[j]) for i in range(n) for j in range(i + 1, n) if draw(st.booleans())]
    fastest = {f: draw(st.floats(0.0, 500.0)) for f in names}
    return Workflow.from_edges("w", names, edges, 1.0), fastest


@settings(max_examples=200, deadline=None)
@given(
    case=workflows(),
    slo_ms=st.floats(1e-3, 5000.0),
    group_size=st.integers(1, 4),
)
def test_split_budgets_never_exceed_the_slo_nor_starve_a_group(
    case: tuple[Workflow, dict[str, float]], slo_ms: float, group_size: int
) -> None:
    workflow, fastest = case
    split = split_slo(workflow, fastest, slo_ms, group_size)
    members = [f for g in split.groups for f in g.functions]
    assert sorted(members) == sorted(workflow.functions)  # a partition
    assert all(1 <= len(g.functions) <= group_size for g in split.groups)
    # Groups run in an order consistent with the DAG.
    for a, b in workflow.edges:
        assert split.group_of[a] <= split.group_of[b]
    assert math.fsum(g.budget_ms for g in split.groups) <= slo_ms
    assert split.groups[-1].deadline_ms == slo_ms
    deadlines = [g.deadline_ms for g in split.groups]
    assert deadlines == sorted(deadlines)
    if split.feasible:
        assert all(g.budget_ms >= g.min_latency_ms for g in split.groups)
