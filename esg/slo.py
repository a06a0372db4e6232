"""Dominator-based SLO distribution: cut a workflow into small groups and split its SLO.

The paper names the steps (dominator tree, stage grouping, SLO assignment) but not the rules;
what follows is the reference note's reconstruction (§3.2), marked as such:

1. A virtual source joins every entry function and a virtual sink every exit function.
2. The functions that dominate the sink (every request passes through them) are the sequential
   cut points; they split the DAG into *segments*: the functions after one cut point up to and
   including the next. A fork/join region stays inside one segment.
3. Segments, in order, are packed into groups of at most `group_size` functions: a segment joins
   the current group when it fits, starts a fresh group when it fits there, and is otherwise cut
   along the topological order into full groups.
4. Each group's weight is its fastest possible critical path (every function at its fastest
   configuration); the SLO is split among groups in proportion to the weights. Budgets are
   rounded down, so they never add up to more than the SLO, and when the SLO covers the sum of
   the weights no group gets less than its own minimum.
5. At run time a group's budget is what is left, minus what later groups are promised:
   `budget = SLO − elapsed − reserved_after`, i.e. the group's cumulative deadline minus the
   elapsed time. Early finishes carry slack forward; delays shrink later budgets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
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
    `reserved_after_ms` = SLO − deadline_ms is what later groups are promised.
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
    """The groups of one workflow, in execution order, and how its SLO is shared among them.

    `feasible` says whether the SLO covers the sum of the groups' minimum critical paths (when
    it does, every group's budget is at least its minimum).
    """

    workflow: str
    slo_ms: float
    dominators: tuple[str, ...]
    groups: tuple[SloGroup, ...]
    feasible: bool
    group_of: Mapping[str, int] = field(repr=False)
    rest: Mapping[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = field(repr=False)

    def group(self, function: str) -> SloGroup:
        return self.groups[self.group_of[function]]

    def remaining(self, function: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """`function` and what follows it inside its group (its descendants there), with edges.

        This is what ESG_1Q plans when `function`'s queue is scheduled.
        """
        return self.rest[function]

    def min_after_ms(self, function: str) -> float:
        """The fastest the groups after `function`'s group can possibly take, in sum."""
        later = self.groups[self.group_of[function] + 1 :]
        return sum(g.min_latency_ms for g in later)

    def budget_ms(self, function: str, elapsed_ms: float) -> float:
        """The run-time budget of `function`'s group: SLO − elapsed − reserved for later groups."""
        return self.group(function).deadline_ms - elapsed_ms


def sequential_dominators(workflow: Workflow) -> tuple[str, ...]:
    """The functions every request passes through, in execution order."""
    graph = _with_terminals(workflow)
    idom = nx.immediate_dominators(graph, _SOURCE)
    chain = []
    at = idom[_SINK]
    while at != _SOURCE:
        chain.append(at)
        at = idom[at]
    return tuple(reversed(chain))


def segments(workflow: Workflow) -> tuple[tuple[str, ...], ...]:
    """The workflow cut at its sequential dominators, each segment in topological order."""
    cuts = sequential_dominators(workflow)
    graph = workflow.graph
    order = workflow.topological_order()
    # A function belongs to the segment of the first cut point it reaches (or is);
    # functions after the last cut point form the final segment.
    reaches = {d: nx.ancestors(graph, d) | {d} for d in cuts}
    buckets: list[list[str]] = [[] for _ in range(len(cuts) + 1)]
    for f in order:
        index = next((i for i, d in enumerate(cuts) if f in reaches[d]), len(cuts))
        buckets[index].append(f)
    return tuple(tuple(b) for b in buckets if b)


def pack(parts: Iterable[Sequence[str]], group_size: int) -> list[list[str]]:
    """Pack segments, in order, into groups of at most `group_size` functions (rule 3)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    groups: list[list[str]] = []
    current: list[str] = []
    for part in parts:
        if len(current) + len(part) <= group_size:
            current.extend(part)
            continue
        if current:
            groups.append(current)
        current = []
        if len(part) <= group_size:
            current = list(part)
            continue
        for start in range(0, len(part), group_size):
            chunk = list(part[start : start + group_size])
            if len(chunk) == group_size:
                groups.append(chunk)
            else:
                current = chunk
    if current:
        groups.append(current)
    return groups


def split_slo(
    workflow: Workflow,
    min_latency_ms: Mapping[str, float],
    slo_ms: float | None = None,
    group_size: int = 3,
) -> SloSplit:
    """Groups and budgets for `workflow` (SLO defaults to the workflow's own, in ms).

    `min_latency_ms` gives each function's fastest profiled latency; a function without one
    counts as 0 ms (it has no profile yet, so no share can be reasoned about).
    """
    slo = workflow.slo_s * 1000.0 if slo_ms is None else slo_ms
    if not slo > 0:
        raise ValueError(f"slo_ms must be > 0, got {slo}")
    parts = segments(workflow)
    members = pack(parts, group_size)
    graph = workflow.graph
    weights = []
    group_edges = []
    for functions in members:
        inside = set(functions)
        edges = tuple((a, b) for a, b in graph.edges if a in inside and b in inside)
        group_edges.append(edges)
        weights.append(_critical_path(functions, edges, min_latency_ms))
    budgets, deadlines = _shares(slo, weights)
    groups = tuple(
        SloGroup(
            index=i,
            functions=tuple(functions),
            edges=group_edges[i],
            min_latency_ms=weights[i],
            budget_ms=budgets[i],
            deadline_ms=deadlines[i],
            reserved_after_ms=0.0 if slo == math.inf else slo - deadlines[i],
        )
        for i, functions in enumerate(members)
    )
    return SloSplit(
        workflow=workflow.name,
        slo_ms=slo,
        dominators=sequential_dominators(workflow),
        groups=groups,
        feasible=slo == math.inf or Fraction(slo) >= sum(map(Fraction, weights), Fraction(0)),
        group_of={f: g.index for g in groups for f in g.functions},
        rest={f: _rest_of(g, f) for g in groups for f in g.functions},
    )


def _rest_of(group: SloGroup, function: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    graph = nx.DiGraph(group.edges)
    graph.add_nodes_from(group.functions)
    keep = {function} | nx.descendants(graph, function)
    functions = tuple(f for f in group.functions if f in keep)
    edges = tuple((a, b) for a, b in group.edges if a in keep and b in keep)
    return functions, edges


def _shares(slo: float, weights: Sequence[float]) -> tuple[list[float], list[float]]:
    """Budgets (rounded down) and cumulative deadlines (rounded down, the last = SLO)."""
    n = len(weights)
    if slo == math.inf:
        return [math.inf] * n, [math.inf] * n
    exact = [Fraction(w) for w in weights]
    total = sum(exact, Fraction(0))
    shares = [Fraction(slo) * w / total for w in exact] if total else [Fraction(slo) / n] * n
    budgets = [_round_down(s) for s in shares]
    deadlines = []
    running = Fraction(0)
    for s in shares:
        running += s
        deadlines.append(_round_down(running))
    return budgets, deadlines


def _round_down(value: Fraction) -> float:
    """The largest float <= value."""
    f = float(value)
    return math.nextafter(f, -math.inf) if Fraction(f) > value else f


def _critical_path(
    functions: Sequence[str], edges: Iterable[tuple[str, str]], latency_ms: Mapping[str, float]
) -> float:
    preds: dict[str, list[str]] = {f: [] for f in functions}
    for a, b in edges:
        preds[b].append(a)
    graph = nx.DiGraph()
    graph.add_nodes_from(functions)
    graph.add_edges_from(edges)
    finish: dict[str, float] = {}
    for f in nx.lexicographical_topological_sort(graph):
        start = max((finish[p] for p in preds[f]), default=0.0)
        finish[f] = start + latency_ms.get(f, 0.0)
    return max(finish.values(), default=0.0)


def _with_terminals(workflow: Workflow) -> nx.DiGraph:
    graph = nx.DiGraph(workflow.graph)
    graph.add_edges_from((_SOURCE, f) for f in workflow.entries())
    graph.add_edges_from((f, _SINK) for f in workflow.exits())
    return graph
