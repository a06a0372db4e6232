"""Dominator-based SLO distribution: cut a workflow into small groups and give each a deadline.

The paper names the steps (dominator tree, stage grouping, SLO assignment) but not the rules;
what follows is our reconstruction (reference note §3.2, revised so that parallel branches stay
parallel on DAGs wider than the paper's):

1. **Times from the DAG itself**, over each function's minimum latency m(f): the earliest finish
   EF(f) (longest path ending at f), the tail T(f) (longest path after f), the longest path
   through f, P(f) = EF(f) + T(f), and the minimum critical path CP = max EF. The latest finish
   that still meets the SLO is LF(f) = SLO − T(f).
2. **Slack shared along paths.** Each function's deadline takes the slack of its own longest
   path, SLO − P(f), in proportion to how much of that path lies before it:
   `d(f) = SLO · EF(f) / P(f)` (and d(f) = SLO when P(f) = 0). For a feasible SLO (>= CP):
   EF(f) <= d(f) <= LF(f), every exit gets d = SLO, and along every edge u → v,
   d(u) + m(v) <= d(v) (a function that finishes at its deadline leaves its successor enough
   time at its fastest). On a chain this is the old proportional split exactly.
   2b. *Where time buys savings* [our heuristic]: given each function's relaxed latency r(f)
   (where it is cheapest; the ESG policy with `slo_split="savings"` passes its cheapest
   configuration's for one request), the same formula runs over l(f) = m(f) + λ·(r(f) − m(f))
   instead of m(f), with the largest λ in [0, 1] (to 1/1024) whose critical path fits the SLO.
   Functions whose cheap configurations are much slower than their fastest get the larger
   shares, instead of those with a long minimum latency. Every property above still holds
   (l >= m and the l-critical path fits the SLO), so the guarantees below do not depend on
   it; without r(f) the shares follow m(f).
3. **Groups.** A virtual source joins every entry and a virtual sink every exit; the functions
   that dominate the sink (every request passes through them) cut the DAG into *segments*, the
   functions after one cut point up to and including the next (a fork/join region stays in one
   segment). Inside a segment functions are taken in deadline order (ties: topological order),
   which is a topological order. Segments are packed in order into groups of at most
   `group_size` functions as before (a segment joins the current group when it fits, starts a
   fresh group when it fits there, else is cut into full groups), with one more rule: a group
   never holds a function whose earliest finish is past the latest finish of one of the group's
   *outputs* (rule 4): that would ask an output to wait for a function it runs in parallel
   with. A function that would break the rule starts a new group.
4. **Deadlines.** A group's *outputs* are the members something outside awaits: its sinks
   (no successor inside the group) and members with a successor in another group. Its deadline
   keeps each output within its share: `D(G) = max(max EF over G, min d(o) over G's outputs)`.
   By rule 3 it lies between every member's earliest finish and every output's latest finish;
   deadlines never decrease along the groups' order and the last group's is the SLO. The stage
   of function f plans f and its descendants inside its group (`remaining`) to the same formula
   over just those functions (`stage_deadline_ms`), so a branch head does not wait on its
   siblings. `budget_ms` is a group's deadline minus its planned start: the earliest, over its
   members with no predecessor inside it, of the latest deadline among their predecessors'
   groups (0 for an entry). On a chain the budgets add up to the SLO; on a DAG a group that
   mixes members of different branches may get a window shorter than its own critical path
   while every member still has the time it needs (the deadlines are what the planner uses).
5. **Infeasible SLOs** (below CP): the split for CP is computed and every time scaled by
   SLO / CP, so the grouping does not depend on how far the SLO is out of reach.
6. **At run time** a stage's budget is its stage deadline minus the time elapsed since the
   request arrived (early finishes carry slack forward, delays shrink later budgets), and "can
   the request still make it" compares the time left with the longest minimum-latency path
   from the function to an exit (`min_path_ms`), not a sum over later groups.

What changed from the first version (groups packed in topological order, their budgets chained
in proportion to each group's critical path): chains, and DAGs whose fork/join regions fit in a
group (the paper's image-classification, depth-recognition and background-elimination), get the
same groups, deadlines and budgets as before (rounded down to floats, as before; e.g.
`python -m esg split docs/examples/split.json` prints the same JSON). A region larger than a
group (the expanded-image-classification's 4-way fan-out with group size 3) is cut in deadline
order instead of name order, and the part cut off no longer gets a budget *after* its siblings': on
`a → {b1..b4} → c` the group {b4, c} has the deadline of c, not that of c minus b1–b3's share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import networkx as nx

from esg.model import Workflow

_SOURCE = ("esg", "source")  # tuples never collide with function names (strings)
_SINK = ("esg", "sink")


@dataclass(frozen=True)
class SloGroup:
    """Functions planned together by ESG_1Q, with their share of the SLO.

    `deadline_ms` is cumulative (from the request's arrival): the group should be done by then;
    `reserved_after_ms` = SLO − deadline_ms is what later work is promised. `min_latency_ms` is
    the group's own critical path with every member at its fastest.
    """

    index: int
    functions: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    min_latency_ms: float
    budget_ms: float
    deadline_ms: float
    reserved_after_ms: float


@dataclass(frozen=True)
class SloSplit:
    """The groups of one workflow, in execution order, and the deadlines they plan to.

    `feasible` says whether the SLO covers the minimum critical path; when it does, every
    stage has a plan that meets its deadline if everything before it ran at its fastest.
    Per function (ms from the request's arrival): `earliest_finish_ms`, `latest_finish_ms`,
    `deadline_ms` (rule 2) and `stage_deadline_ms` (rule 4).
    """

    workflow: str
    slo_ms: float
    dominators: tuple[str, ...]
    groups: tuple[SloGroup, ...]
    feasible: bool
    group_of: Mapping[str, int] = field(repr=False)
    rest: Mapping[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = field(repr=False)
    earliest_finish_ms: Mapping[str, float] = field(repr=False, default_factory=dict)
    latest_finish_ms: Mapping[str, float] = field(repr=False, default_factory=dict)
    deadline_ms: Mapping[str, float] = field(repr=False, default_factory=dict)
    stage_deadline_ms: Mapping[str, float] = field(repr=False, default_factory=dict)
    path_ms: Mapping[str, float] = field(repr=False, default_factory=dict)
    after_ms: Mapping[str, float] = field(repr=False, default_factory=dict)

    def group(self, function: str) -> SloGroup:
        return self.groups[self.group_of[function]]

    def remaining(self, function: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """`function` and what follows it inside its group (its descendants there), with edges.

        This is what ESG_1Q plans when `function`'s queue is scheduled.
        """
        return self.rest[function]

    def min_path_ms(self, function: str) -> float:
        """The longest minimum-latency path from `function` (included) to an exit: the least
        time the request still needs once `function` is about to run."""
        return self.path_ms[function]

    def min_after_ms(self, function: str) -> float:
        """The longest minimum-latency path after `function` (excluded) to an exit."""
        return self.after_ms[function]

    def reserved_after_ms(self, function: str) -> float:
        """SLO − the stage deadline of `function`: what the work after its stage is promised."""
        if not math.isfinite(self.slo_ms):
            return 0.0
        return self.slo_ms - self.stage_deadline_ms[function]

    def budget_ms(self, function: str, elapsed_ms: float) -> float:
        """The run-time budget of `function`'s stage: its stage deadline − elapsed."""
        return self.stage_deadline_ms[function] - elapsed_ms


def sequential_dominators(workflow: Workflow) -> tuple[str, ...]:
    """The functions every request passes through, in execution order."""
    return _structure(workflow)[0]


def segments(workflow: Workflow) -> tuple[tuple[str, ...], ...]:
    """The workflow cut at its sequential dominators, each segment in topological order."""
    return _structure(workflow)[1]


def _structure(workflow: Workflow) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(sequential dominators, segments) of `workflow`'s DAG: the part of a split that depends
    on the graph alone, worked out once per graph (a planner splits the same DAG again
    whenever a latency or the SLO moves, and this took a third of a split)."""
    key = (workflow.functions, workflow.edges)
    found = _STRUCTURES.get(key)
    if found is None:
        if len(_STRUCTURES) >= 256:
            _STRUCTURES.clear()
        found = _STRUCTURES[key] = _work_out_structure(workflow)
    return found


_STRUCTURES: dict[tuple[object, ...], tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {}


def _work_out_structure(
    workflow: Workflow,
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    graph = _with_terminals(workflow)
    idom = nx.immediate_dominators(graph, _SOURCE)
    chain = []
    at = idom[_SINK]
    while at != _SOURCE:
        chain.append(at)
        at = idom[at]
    cuts = tuple(reversed(chain))
    # A function belongs to the segment of the first cut point it reaches (or is);
    # functions after the last cut point form the final segment.
    reaches = {d: nx.ancestors(workflow.graph, d) | {d} for d in cuts}
    buckets: list[list[str]] = [[] for _ in range(len(cuts) + 1)]
    for f in workflow.topological_order():
        index = next((i for i, d in enumerate(cuts) if f in reaches[d]), len(cuts))
        buckets[index].append(f)
    return cuts, tuple(tuple(b) for b in buckets if b)


def pack(
    parts: Iterable[Sequence[str]],
    group_size: int,
    fits: Callable[[Sequence[str]], bool] | None = None,
) -> list[list[str]]:
    """Pack segments, in order, into groups of at most `group_size` functions (rule 3).

    `fits(group)` (default: always) says whether a candidate group keeps rule 3's condition;
    a single function always does.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    ok = fits or (lambda _group: True)
    groups: list[list[str]] = []
    current: list[str] = []
    for part in parts:
        if len(current) + len(part) <= group_size and ok([*current, *part]):
            current.extend(part)
            continue
        if current:
            groups.append(current)
        current = []
        if len(part) <= group_size and ok(list(part)):
            current = list(part)
            continue
        for f in part:
            if len(current) < group_size and ok([*current, f]):
                current.append(f)
            else:
                groups.append(current)
                current = [f]
    if current:
        groups.append(current)
    return groups


class _Fits:
    """Rule 3's condition: no member finishes (at the earliest) after a sink's latest finish."""

    def __init__(self, succs: Mapping[str, Sequence[str]], ef: Mapping[str, Fraction],
                 lf: Mapping[str, Fraction]) -> None:
        self.succs, self.ef, self.lf = succs, ef, lf

    def __call__(self, group: Sequence[str]) -> bool:
        latest = max(self.ef[f] for f in group)
        return all(latest <= self.lf[f] for f in _outputs(group, self.succs))


@dataclass(frozen=True)
class _Times:
    """Rule 1 and 2 in exact arithmetic, for the SLO `slo` (>= cp)."""

    m: Mapping[str, Fraction]
    ef: Mapping[str, Fraction]
    tail: Mapping[str, Fraction]
    cp: Fraction

    @classmethod
    def of(cls, workflow: Workflow, latency_ms: Mapping[str, float | Fraction]) -> _Times:
        order = workflow.topological_order()
        m = {f: Fraction(latency_ms.get(f, 0.0)) for f in order}
        ef: dict[str, Fraction] = {}
        for f in order:
            ef[f] = m[f] + max((ef[p] for p in workflow.predecessors(f)), default=Fraction(0))
        tail: dict[str, Fraction] = {}
        for f in reversed(order):
            tail[f] = max((m[s] + tail[s] for s in workflow.successors(f)), default=Fraction(0))
        return cls(m, ef, tail, max(ef.values()))

    def latest(self, slo: Fraction) -> dict[str, Fraction]:
        return {f: slo - t for f, t in self.tail.items()}

    def deadlines(self, slo: Fraction) -> dict[str, Fraction]:
        out = {}
        for f, ef in self.ef.items():
            through = ef + self.tail[f]
            out[f] = slo * ef / through if through else slo
        return out


def split_slo(
    workflow: Workflow,
    min_latency_ms: Mapping[str, float],
    slo_ms: float | None = None,
    group_size: int = 3,
    relaxed_latency_ms: Mapping[str, float] | None = None,
) -> SloSplit:
    """Groups and deadlines for `workflow` (SLO defaults to the workflow's own, in ms).

    `min_latency_ms` gives each function's fastest profiled latency; a function without one
    counts as 0 ms (it has no profile yet, so no share can be reasoned about).
    `relaxed_latency_ms` (optional) gives the latency at which each function is cheapest
    (rule 2b); without it the slack is shared in proportion to the minimum latencies.
    """
    slo = workflow.slo_s * 1000.0 if slo_ms is None else slo_ms
    if not slo > 0:
        raise ValueError(f"slo_ms must be > 0, got {slo}")
    times = _Times.of(workflow, min_latency_ms)
    finite = math.isfinite(slo)
    # Rule 5: group and share for max(SLO, CP), then scale every time by SLO / that.
    target = max(Fraction(slo), times.cp) if finite else times.cp
    scale = Fraction(slo) / target if finite and target else Fraction(1)
    latest = times.latest(target)
    planning = times
    if relaxed_latency_ms is not None and finite:
        planning = _planning_times(workflow, times, relaxed_latency_ms, target)
    share = planning.deadlines(target)
    topo = {f: i for i, f in enumerate(workflow.topological_order())}
    succs = {f: workflow.successors(f) for f in workflow.functions}
    parts = [sorted(part, key=lambda f: (share[f], topo[f])) for part in segments(workflow)]
    packed = pack(parts, group_size, _Fits(succs, times.ef, latest))
    members = [sorted(functions, key=topo.__getitem__) for functions in packed]
    graph = workflow.graph
    exact_deadlines = []
    for functions in members:
        exact_deadlines.append(_deadline(functions, succs, times.ef, share))
    rest = {f: _rest_of(functions, graph, f) for functions in members for f in functions}
    stage = {f: _deadline(rest[f][0], succs, times.ef, share) for f in rest}

    def ms(value: Fraction) -> float:
        return _round_down(value * scale) if finite else math.inf

    group_of = {f: i for i, functions in enumerate(members) for f in functions}
    groups = []
    for i, functions in enumerate(members):
        inside = set(functions)
        edges = tuple((a, b) for a, b in graph.edges if a in inside and b in inside)
        deadline = exact_deadlines[i]
        previous = min(
            max((exact_deadlines[group_of[p]] for p in graph.predecessors(f)), default=Fraction(0))
            for f in functions
            if not any(p in inside for p in graph.predecessors(f))
        )
        groups.append(
            SloGroup(
                index=i,
                functions=tuple(functions),
                edges=edges,
                min_latency_ms=float(_critical_path(functions, edges, times.m)),
                budget_ms=ms(deadline - previous),
                deadline_ms=ms(deadline),
                reserved_after_ms=float((target - deadline) * scale) if finite else 0.0,
            )
        )
    order = workflow.topological_order()
    return SloSplit(
        workflow=workflow.name,
        slo_ms=slo,
        dominators=sequential_dominators(workflow),
        groups=tuple(groups),
        feasible=not finite or Fraction(slo) >= times.cp,
        group_of=group_of,
        rest=rest,
        earliest_finish_ms={f: float(times.ef[f]) for f in order},
        latest_finish_ms={f: slo - float(times.tail[f]) for f in order},
        deadline_ms={f: ms(share[f]) for f in order},
        stage_deadline_ms={f: ms(stage[f]) for f in order},
        path_ms={f: float(times.m[f] + times.tail[f]) for f in order},
        after_ms={f: float(times.tail[f]) for f in order},
    )


def _planning_times(
    workflow: Workflow, fastest: _Times, relaxed_ms: Mapping[str, float], slo: Fraction
) -> _Times:
    """Rule 2b: the times over l(f) = m(f) + λ·(r(f) − m(f)), r the relaxed latency, with the
    largest λ in [0, 1] (to 1/1024) whose critical path still fits `slo` (λ = 0 always does)."""
    extra = {
        f: max(Fraction(0), Fraction(relaxed_ms.get(f, 0.0)) - m) for f, m in fastest.m.items()
    }
    if not any(extra.values()):
        return fastest

    def at(step: int) -> _Times:
        weight = Fraction(step, 1024)
        return _Times.of(workflow, {f: m + weight * extra[f] for f, m in fastest.m.items()})

    if at(1024).cp <= slo:
        return at(1024)
    lo, hi = 0, 1024  # at(lo) fits, at(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid).cp <= slo else (lo, mid)
    return at(lo) if lo else fastest


def _round_down(value: Fraction) -> float:
    """The largest float <= value (deadlines and budgets never round up past the SLO)."""
    f = float(value)
    return math.nextafter(f, -math.inf) if Fraction(f) > value else f


def _deadline(
    functions: Sequence[str],
    succs: Mapping[str, Sequence[str]],
    ef: Mapping[str, Fraction],
    share: Mapping[str, Fraction],
) -> Fraction:
    """Rule 4: max(max EF over the functions, min share over those with no successor among
    them)."""
    outputs = _outputs(functions, succs)
    return max(max(ef[f] for f in functions), min(share[f] for f in outputs))


def _outputs(functions: Sequence[str], succs: Mapping[str, Sequence[str]]) -> list[str]:
    """The members whose finish something outside awaits: those with no successor among
    `functions` (its sinks) and those with a successor elsewhere."""
    inside = set(functions)
    return [
        f for f in functions
        if not any(s in inside for s in succs[f]) or any(s not in inside for s in succs[f])
    ]


def _rest_of(
    functions: Sequence[str], graph: nx.DiGraph, function: str
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    inside = set(functions)
    keep = {function}
    frontier = [function]
    while frontier:
        f = frontier.pop()
        for s in graph.successors(f):
            if s in inside and s not in keep:
                keep.add(s)
                frontier.append(s)
    ordered = tuple(f for f in functions if f in keep)
    edges = tuple((a, b) for a, b in graph.edges if a in keep and b in keep)
    return ordered, edges


def _critical_path(
    functions: Sequence[str], edges: Iterable[tuple[str, str]], latency: Mapping[str, Fraction]
) -> Fraction:
    """The longest path's latency through `functions`, given in a topological order."""
    preds: dict[str, list[str]] = {f: [] for f in functions}
    for a, b in edges:
        preds[b].append(a)
    finish: dict[str, Fraction] = {}
    for f in functions:
        start = max((finish[p] for p in preds[f]), default=Fraction(0))
        finish[f] = start + latency.get(f, Fraction(0))
    return max(finish.values(), default=Fraction(0))


def _with_terminals(workflow: Workflow) -> nx.DiGraph:
    graph = nx.DiGraph(workflow.graph)
    graph.add_edges_from((_SOURCE, f) for f in workflow.entries())
    graph.add_edges_from((f, _SINK) for f in workflow.exits())
    return graph
