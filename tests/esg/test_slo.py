"""Dominator-based SLO distribution: hand-worked splits, then properties on random DAGs."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

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


def test_a_wide_fan_out_cut_across_groups_keeps_its_branches_parallel() -> None:
    # a -> {b1, b2, b3, b4} -> c, 10 ms each: CP = 30 ms, SLO 60 ms, so every deadline is 2 x
    # the earliest finish: a 20, each b 40, c 60.
    wf = _workflow([("a", b) for b in ("b1", "b2", "b3", "b4")]
                   + [(b, "c") for b in ("b1", "b2", "b3", "b4")])
    split = split_slo(wf, dict.fromkeys(wf.functions, 10.0), slo_ms=60.0)
    assert [g.functions for g in split.groups] == [("a",), ("b1", "b2", "b3"), ("b4", "c")]
    # The branches cut off with c are due when c is (60), not after b1-b3's share; b1-b3 are
    # due at 40 = SLO - c's 10 ms at its fastest - its 10 ms of slack.
    assert [g.deadline_ms for g in split.groups] == [20.0, 40.0, 60.0]
    assert split.feasible
    # b4's stage plans b4 and c to c's deadline; b1's stage plans b1 alone, due at 40.
    assert split.remaining("b4") == (("b4", "c"), (("b4", "c"),))
    assert split.stage_deadline_ms["b4"] == 60.0
    assert split.budget_ms("b1", elapsed_ms=25.0) == 15.0
    # Run time: what remains after a is 10 + 10 ms at the fastest, whichever branch.
    assert split.min_path_ms("b3") == 20.0
    assert split.min_after_ms("a") == 20.0


def test_a_group_never_waits_for_a_branch_it_runs_beside() -> None:
    # x1 -> x2 -> x3 (30 ms each) beside y -> z1 -> z2 (5, 40, 40): CP = max(90, 85) = 90.
    # With SLO 90, y must be done by LF(y) = 90 - 80 = 10; x3 can finish at 90 at the
    # earliest, so y may not share a group with x3 (nor x2, EF 60).
    wf = _workflow([("x1", "x2"), ("x2", "x3"), ("y", "z1"), ("z1", "z2")])
    fastest = {"x1": 30.0, "x2": 30.0, "x3": 30.0, "y": 5.0, "z1": 40.0, "z2": 40.0}
    split = split_slo(wf, fastest, slo_ms=90.0)
    group_y = split.group("y")
    assert max(split.earliest_finish_ms[f] for f in group_y.functions) <= 10.0
    assert group_y.deadline_ms <= split.latest_finish_ms["y"] == 10.0


def test_relaxed_latencies_give_the_slack_to_functions_whose_cheap_plans_are_slow() -> None:
    # a -> b, 10 ms each at the fastest; a's cheapest configuration takes 50 ms, b's 10 ms.
    # SLO 40: in proportion to the fastest latencies a is due at 20; with the relaxed ones,
    # l = m + λ(r - m) = (10 + 40λ, 10) fits 40 up to λ = 0.5: l(a) = 30, a is due at 30.
    chain = _workflow([("a", "b")])
    fastest = {"a": 10.0, "b": 10.0}
    assert split_slo(chain, fastest, 40.0, 1).deadline_ms["a"] == 20.0
    split = split_slo(chain, fastest, 40.0, 1, relaxed_latency_ms={"a": 50.0, "b": 10.0})
    assert split.deadline_ms["a"] == 30.0
    assert [g.deadline_ms for g in split.groups] == [30.0, 40.0]
    # Room for every cheapest plan (SLO 80 >= 50 + 10): λ = 1, the slack shared over (50, 10).
    roomy = split_slo(chain, fastest, 80.0, 1, relaxed_latency_ms={"a": 50.0, "b": 10.0})
    assert roomy.deadline_ms["a"] == pytest.approx(80.0 * 50 / 60)


def test_paper_applications_keep_their_groups_and_deadlines() -> None:
    # image classification: a 3-chain, one group due at the SLO.
    chain = _workflow([("pre", "resnet"), ("resnet", "label")])
    split = split_slo(chain, {"pre": 4.0, "resnet": 20.0, "label": 1.0}, slo_ms=50.0)
    assert [(g.functions, g.deadline_ms) for g in split.groups] == [
        (("pre", "resnet", "label"), 50.0)
    ]
    # background elimination: pre -> {seg, edges} -> composite, as before: pre alone, due at
    # 50 * 4 / 25 = 8 ms, then the fork/join region, due at the SLO.
    be = _workflow([("pre", "seg"), ("pre", "edges"), ("seg", "comp"), ("edges", "comp")])
    split = split_slo(be, {"pre": 4.0, "seg": 16.0, "edges": 3.0, "comp": 5.0}, slo_ms=50.0)
    assert [(g.functions, g.deadline_ms, g.budget_ms) for g in split.groups] == [
        (("pre",), 8.0, 8.0),
        (("edges", "seg", "comp"), 50.0, 42.0),
    ]


@st.composite
def dags(draw: st.DrawFn) -> tuple[Workflow, dict[str, float]]:
    """1-30 functions, each with up to 3 predecessors among the 8 before it (skip edges;
    several entries and exits), fan-out at most 5, some functions taking 0 ms."""
    n = draw(st.integers(1, 30))
    names = [f"f{i:02d}" for i in range(n)]
    fan_out = [0] * n
    edges = []
    for i in range(1, n):
        window = list(range(max(0, i - 8), i))
        chosen = draw(st.lists(st.sampled_from(window), max_size=3, unique=True))
        for p in chosen:
            if fan_out[p] < 5:
                fan_out[p] += 1
                edges.append((names[p], names[i]))
    latency = st.one_of(st.just(0.0), st.floats(0.01, 200.0))
    fastest = {f: draw(latency) for f in names}
    return Workflow.from_edges("w", names, edges, 1.0), fastest


def _exact_times(
    workflow: Workflow, fastest: dict[str, float]
) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """Earliest finish and tail (longest path after) of every function, exactly."""
    order = workflow.topological_order()
    ef: dict[str, Fraction] = {}
    for f in order:
        before = [ef[p] for p in workflow.predecessors(f)]
        ef[f] = Fraction(fastest[f]) + max(before, default=Fraction(0))
    tail: dict[str, Fraction] = {}
    for f in reversed(order):
        after = [Fraction(fastest[s]) + tail[s] for s in workflow.successors(f)]
        tail[f] = max(after, default=Fraction(0))
    return ef, tail


def _at_least(value: Fraction) -> float:
    """The smallest float >= value (and > 0)."""
    f = float(value)
    if Fraction(f) < value:
        f = math.nextafter(f, math.inf)
    return max(f, 1e-3)


@settings(max_examples=300, deadline=None)
@given(
    case=dags(),
    factor=st.floats(1.0, 3.0),
    group_size=st.integers(1, 6),
    slower=st.one_of(st.none(), st.lists(st.floats(1.0, 20.0), min_size=30, max_size=30)),
)
def test_a_feasible_slo_gives_every_group_a_deadline_its_functions_can_meet(
    case: tuple[Workflow, dict[str, float]],
    factor: float,
    group_size: int,
    slower: list[float] | None,
) -> None:
    workflow, fastest = case
    ef, tail = _exact_times(workflow, fastest)
    cp = max(ef.values())
    slo = _at_least(cp)
    slo = max(slo, slo * factor)
    # Rule 2b's relaxed latencies (1-20 x the fastest) move the shares, never the guarantees.
    relaxed = None if slower is None else {
        f: fastest[f] * x for f, x in zip(workflow.functions, slower, strict=False)
    }
    split = split_slo(workflow, fastest, slo, group_size, relaxed_latency_ms=relaxed)
    # Rounding a deadline to a float may move it by half an ulp.
    tolerance = Fraction(slo) * Fraction(1, 10**12)
    assert split.feasible
    for group in split.groups:
        inside = set(group.functions)
        deadline = Fraction(group.deadline_ms)
        for f in group.functions:
            # Every member can be done by the group's deadline...
            assert deadline >= ef[f] - tolerance
            # ... and the deadline never makes a sink (or a member another group waits for)
            # late for what follows it at its fastest.
            succs = workflow.successors(f)
            if not any(s in inside for s in succs) or any(s not in inside for s in succs):
                assert deadline <= Fraction(slo) - tail[f] + tolerance
    for f in workflow.functions:
        members, _ = split.remaining(f)
        stage = Fraction(split.stage_deadline_ms[f])
        assert all(stage >= ef[g] - tolerance for g in members)
        assert Fraction(split.deadline_ms[f]) >= ef[f] - tolerance
        assert Fraction(split.deadline_ms[f]) <= Fraction(slo) - tail[f] + tolerance


@settings(max_examples=200, deadline=None)
@given(case=dags(), slo_ms=st.floats(1e-3, 5000.0), group_size=st.integers(1, 6))
def test_split_is_a_partition_in_dag_order_with_deadlines_up_to_the_slo(
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
    assert split.groups[-1].deadline_ms == slo_ms
    deadlines = [g.deadline_ms for g in split.groups]
    assert deadlines == sorted(deadlines)
    assert all(0 <= g.budget_ms <= g.deadline_ms for g in split.groups)
    ef, _ = _exact_times(workflow, fastest)
    assert split.feasible == (Fraction(slo_ms) >= max(ef.values()))


@settings(max_examples=100, deadline=None)
@given(
    fastest=st.lists(st.one_of(st.just(0.0), st.floats(0.01, 200.0)), min_size=1, max_size=12),
    factor=st.floats(1.0, 3.0),
    group_size=st.integers(1, 4),
)
def test_a_chain_is_split_in_proportion_to_its_groups_fastest_paths(
    fastest: list[float], factor: float, group_size: int
) -> None:
    names = [f"f{i:02d}" for i in range(len(fastest))]
    chain = Workflow.from_edges("c", names, list(itertools.pairwise(names)), 1.0)
    total = sum(map(Fraction, fastest), Fraction(0))
    slo = max(_at_least(total) * factor, _at_least(total))
    split = split_slo(chain, dict(zip(names, fastest, strict=True)), slo, group_size)
    assert [list(g.functions) for g in split.groups] == [
        names[i : i + group_size] for i in range(0, len(names), group_size)
    ]
    done = Fraction(0)
    for group in split.groups:
        done += sum((Fraction(fastest[names.index(f)]) for f in group.functions), Fraction(0))
        # The old rule: the SLO x the share of the chain's fastest path done by then,
        # rounded down.
        expected = Fraction(slo) * done / total if total else Fraction(slo)
        assert Fraction(group.deadline_ms) <= expected
        assert Fraction(math.nextafter(group.deadline_ms, math.inf)) > expected
