"""ESG_1Q: the top-K cheapest configuration plans of one group that meet its time budget.

A group is a few functions (the current one and the rest of its SLO group) joined by edges; a
plan picks one option (configuration, latency, per-request cost) per function. A plan's cost is
the sum of its options' costs; its latency is the critical path (longest path through the
group's DAG of the chosen latencies). A plan is feasible when latency <= budget.

**Order.** Plans are ranked by the key (cost, latency, configs), where `configs` is the tuple of
(batch, vcpu, vgpu) in the group's canonical order (`canonical_order`: the lexicographic
topological order of the function names). Costs and latencies are compared *exactly*: every
binary float is an exact dyadic rational, so the search scales them to integers once and adds
integers. That makes ties well defined and the order total; reported numbers are the exact sums
rounded to the nearest float.

**Result.** The first K feasible plans in that order, exactly what brute force over the product
of the options returns. When no plan is feasible: the K fastest plans, ranked by (latency,
cost, configs) and marked infeasible.

**How (A* with the two blades; the paper gives no formulas, this is a reconstruction):**

* Per function, once per profile version (`esg.options.prepare_options`), then per group
  (`esg.group.compile_group`, cached by the caller): options sorted by key; options that K
  or more others *dominate* are dropped. d dominates c when cost_d <= cost_c, latency_d <=
  latency_c and (cost_d < cost_c or configs_d < configs_c). Swapping c for d in any plan gives
  a plan with a strictly smaller key whose latency is no larger (the critical path is monotone),
  so a plan using c has >= K strictly better plans, feasible whenever it is: never in the top K,
  for either order and any budget.
* Per budget (`search`): the *time blade* drops every option whose fastest completion (the
  critical path with all other functions at their fastest option) exceeds the budget, and every
  search node whose admissible latency bound exceeds it. A* pops nodes in order of an
  admissible lower bound on the key of every plan they lead to (prefix cost + cheapest
  remaining options, critical path with the unassigned at their fastest, the config prefix),
  so complete plans pop in exact key order and the search stops at the K-th. When a node is
  first popped its cost bound is tightened with the time left (chains: the exact cheapest
  completion that fits, from Pareto fronts of the remaining functions built once per group;
  DAGs: per function, the cheapest option that fits its own window) and the node is re-queued
  if that raised it. The *cost blade* is that stop: no node whose bound exceeds the
  K-th plan is ever expanded, and siblings are generated lazily, one block of equal cost at a
  time in cost order, so the pricier siblings of a node are never even built.
* Each search also knows the budgets on which its answer is valid: from the latency of the
  slowest returned plan up to (not including) the smallest latency bound the time blade cut.
  Any budget in that interval yields the same plans (the plans the blade cut stay infeasible,
  the returned ones stay feasible), so `esg.cache.PlanCache` reuses the answer there: a cache
  that can never change an answer. An infeasible answer is valid for every budget below the
  fastest plan's latency.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from esg.group import CompiledGroup, canonical_order, compile_group
from esg.model import Config
from esg.options import Option, PreparedOptions, prepare_options

__all__ = [
    "CompiledGroup",
    "Option",
    "Plan",
    "PreparedOptions",
    "SearchResult",
    "ValidAnswer",
    "budget_units",
    "canonical_order",
    "compile_group",
    "esg_1q",
    "prepare_options",
    "search",
    "search_valid",
]


@dataclass(frozen=True)
class Plan:
    """One configuration per function of the group (in canonical order) and what it adds up to."""

    cost: float
    latency_ms: float
    feasible: bool
    configs: Mapping[str, Config]

    @functools.cached_property
    def key(self) -> str:
        """The configurations as one string: what tells two plans of one group apart (its
        members are always in the same order). A string keeps its hash; a tuple of
        configurations is hashed again, configuration by configuration, on every lookup, and
        cached plans are looked up on every decision."""
        return ";".join(f"{c.batch},{c.vcpu},{c.vgpu}" for c in self.configs.values())


@dataclass(frozen=True)
class SearchResult:
    """Plans in priority order and how many search nodes were expanded to find them."""

    plans: tuple[Plan, ...]
    expanded: int

    @property
    def feasible(self) -> bool:
        return bool(self.plans) and self.plans[0].feasible


def esg_1q(
    functions: Sequence[str],
    edges: Iterable[tuple[str, str]],
    options: Mapping[str, Sequence[Option]],
    budget_ms: float,
    k: int = 8,
) -> SearchResult:
    """Compile the group and search it once (see the module docstring for the contract)."""
    return search(compile_group(functions, edges, options, k), budget_ms)


def search(group: CompiledGroup, budget_ms: float) -> SearchResult:
    """The top-K feasible plans of `group` within `budget_ms`, or the K fastest if none is."""
    return search_valid(group, budget_units(group, budget_ms))[0]


def budget_units(group: CompiledGroup, budget_ms: float) -> int | None:
    """The budget in the group's exact latency units, rounded down (None: no budget)."""
    if math.isnan(budget_ms):
        raise ValueError("budget_ms must be a number, got nan")
    if budget_ms == math.inf:
        return None
    if budget_ms == -math.inf:
        return -1
    # exact, as floor(Fraction(budget_ms) * lat_scale), without Fraction's cost on every search
    numerator, denominator = budget_ms.as_integer_ratio()
    return numerator * group.lat_scale // denominator


# A search's answer and the budgets (exact units, lo <= budget < hi) on which it is valid.
ValidAnswer = tuple[SearchResult, float, float]


def search_valid(group: CompiledGroup, budget: int | None) -> ValidAnswer:
    if budget is not None and budget < group.fastest:
        return _fastest(group), -math.inf, group.fastest
    return _cheapest(group, budget)


def _plan(group: CompiledGroup, cost: int, lat: int, ranks: tuple[int, ...], ok: bool) -> Plan:
    configs = {
        f: layer.by_rank[r].config
        for f, layer, r in zip(group.functions, group.layers, ranks, strict=True)
    }
    return Plan(cost / group.cost_scale, lat / group.lat_scale, ok, configs)


# A search node: (cost bound, latency bound, config ranks so far, depth, where the next cost
# block of its siblings starts (-1: another node generates it), exact cost so far, finish times
# so far, the parent's exact cost). The first three are the node's lower bound on the key of
# every plan it leads to; the ranks make it unique.
_Node = tuple[int, int, tuple[int, ...], int, int, int, tuple[int, ...], int]


def _cheapest(group: CompiledGroup, budget: int | None) -> ValidAnswer:
    run = _CheapestFirst(group, budget)
    run.push_block(0, 0, (), (), 0)
    open_, done, n, k = run.open, run.done, len(group.functions), group.k
    tighten = budget is not None and n > 1
    expanded = 0
    while open_ and len(done) < k:
        node = heapq.heappop(open_)
        bound_cost, bound, ranks, depth, next_at, cost, fin, parent_cost = node
        if tighten and 0 < depth < n and next_at != _EVALUATED:
            # The node was ordered by cost + cheapest remaining options, ignoring time; a
            # budget-aware bound is tighter. If it is higher, the node goes back with it and
            # its next siblings (which its old bound also covered) are generated now. Every
            # entry's key stays a lower bound on all it leads to, so completions still pop in
            # exact key order.
            assert budget is not None
            rest, slower = group.remaining_cost(depth, fin, budget)
            tight = cost + rest
            if tight > bound_cost:
                run.cut = min(run.cut, slower)
                if next_at >= 0:
                    run.push_block(depth - 1, parent_cost, fin[:-1], ranks[:-1], next_at)
                again = (tight, bound, ranks, depth, _EVALUATED, cost, fin, parent_cost)
                heapq.heappush(open_, again)
                continue
        expanded += 1
        if depth == n:
            done.append((cost, bound, ranks))
        else:
            run.push_block(depth, cost, fin, ranks, 0)
        if next_at >= 0:
            run.push_block(depth - 1, parent_cost, fin[:-1], ranks[:-1], next_at)
    plans = tuple(_plan(group, cost, lat, ranks, True) for cost, lat, ranks in done)
    return SearchResult(plans, expanded), max(lat for _, lat, _ in done), run.cut


_EVALUATED = -2  # `next_at` of a node re-queued with its tight bound (siblings already out)


class _CheapestFirst:
    """The state of one cheapest-first search: candidates after the static time blade, the
    open list, the plans done, and the smallest latency bound the time blade cut."""

    def __init__(self, group: CompiledGroup, budget: int | None) -> None:
        layers, n = group.layers, len(group.functions)
        kept, self.cut = _static_time_blade(group, budget)
        # Per layer, the candidates' exact costs, latencies and config ranks in key order,
        # and where each one's block of equal cost ends.
        self.costs = [[layers[j].cost[x] for x in kept[j]] for j in range(n)]
        self.lats = [[layers[j].lat[x] for x in kept[j]] for j in range(n)]
        self.ranks = [[layers[j].rank[x] for x in kept[j]] for j in range(n)]
        self.ends = [_block_ends(costs) for costs in self.costs]
        self.rest_cost = [sum(min(c) for c in self.costs[d:]) for d in range(n + 1)]
        self.group = group
        self.budget = budget
        self.open: list[_Node] = []
        self.done: list[tuple[int, int, tuple[int, ...]]] = []

    def push_block(
        self, d: int, g_cost: int, fin: tuple[int, ...], ranks: tuple[int, ...], at: int
    ) -> None:
        """Push the first cost block of layer d's candidates from `at` on that passes the time
        blade: the first passing candidate and every later one of exactly the same cost.

        Within a block, bounds need not grow with the layer's order (a longer latency off the
        critical path leaves the bound equal while the config may compare smaller), so a
        block is pushed whole; across blocks the cost grows strictly, so the next block is
        generated lazily by the block's first node when it is popped.

        A new node's latency bound is max(fixed, ready + lat + tail): `fixed` from the paths
        that avoid function d, the rest from the paths through it.
        """
        group, budget = self.group, self.budget
        pd = group.preds[d]
        ready = fin[pd[0]] if len(pd) == 1 else max([fin[p] for p in pd], default=0)
        tail = group.own_tail[d]
        fixed = group.entry_bound[d + 1]
        for a, t in group.front_others[d]:
            if fin[a] + t > fixed:
                fixed = fin[a] + t
        lats = self.lats[d]
        count = len(lats)
        pos = at
        limit = math.inf if budget is None else budget - ready - tail
        if budget is not None:
            if fixed > budget:
                self.cut = min(self.cut, fixed)  # every candidate's bound is >= fixed
                return
            while pos < count and lats[pos] > limit:
                pos += 1
            if pos > at:  # the time blade cut these: their bounds are ready + lat + tail
                self.cut = min(self.cut, ready + tail + min(lats[at:pos]))
        if pos == count:
            return
        end = self.ends[d][pos]
        costs, rank_d, rest, open_ = self.costs[d], self.ranks[d], self.rest_cost[d + 1], self.open
        next_at = end if end < count else -1
        for q in range(pos, end):
            lat = lats[q]
            if lat > limit:
                self.cut = min(self.cut, ready + tail + lat)
                continue
            finish = ready + lat
            bound = finish + tail if finish + tail > fixed else fixed
            cost = g_cost + costs[q]
            node = (
                cost + rest,
                bound,
                (*ranks, rank_d[q]),
                d + 1,
                next_at,
                cost,
                (*fin, finish),
                g_cost,
            )
            heapq.heappush(open_, node)
            next_at = -1  # only the block's first node generates the next block


def _block_ends(costs: list[int]) -> list[int]:
    """For each position, the position after the last candidate of the same cost."""
    ends = [0] * len(costs)
    end = len(costs)
    for i in range(len(costs) - 1, -1, -1):
        if i + 1 < len(costs) and costs[i + 1] != costs[i]:
            end = i + 1
        ends[i] = end
    return ends


def _static_time_blade(group: CompiledGroup, budget: int | None) -> tuple[list[list[int]], float]:
    """Candidates per layer whose fastest completion fits the budget, and the smallest cut bound.

    The fastest completion through option x of layer j is head[j] + lat[x] + tail_after[j].
    """
    cut: float = math.inf
    kept: list[list[int]] = []
    for j, layer in enumerate(group.layers):
        if budget is None:
            kept.append(list(range(len(layer.options))))
            continue
        threshold = budget - group.head[j] - group.tail_after[j]
        kept.append([x for x, lat in enumerate(layer.lat) if lat <= threshold])
        over = _first_above(layer.by_lat, threshold)
        if over is not None:
            cut = min(cut, group.head[j] + over + group.tail_after[j])
    return kept, cut


def _first_above(sorted_values: tuple[int, ...], threshold: int) -> int | None:
    """The smallest value > threshold, or None."""
    i = bisect.bisect_right(sorted_values, threshold)
    return sorted_values[i] if i < len(sorted_values) else None


def _fastest(group: CompiledGroup) -> SearchResult:
    """The K fastest plans, ranked by (latency, cost, configs), all marked infeasible.

    Best-first over the same nodes as the cheapest-first search, keyed by a lower bound on
    (latency, cost, configs) of every plan below them: the critical path with the unassigned
    functions at their fastest, the cost with them at their cheapest, the config prefix.
    Children are generated lazily, one at a time, in key order, and a node's next sibling is
    pushed only when the node is popped, so a search pops and pushes O(K · n) nodes rather
    than every child of every node (3 × 256 options: tens of nodes, not thousands).

    The children of a node at layer d, with `ready` (when d's inputs are done), `tail` (the
    fastest path after d) and `fixed` (the bound from paths avoiding d), have the latency bound
    max(fixed, ready + lat + tail). Options with ready + lat + tail <= fixed all share the bound
    `fixed`, and among them the key grows with (cost, rank); the others have strictly larger
    bounds that grow with (lat, cost, rank). So the siblings in key order are: the options with
    lat <= fixed − ready − tail by (cost, rank), then the rest by (lat, cost, rank).
    """
    n, k, layers = len(group.functions), group.k, group.layers
    orders = group.speed_orders()
    rest_cost = [sum(min(layer.cost) for layer in layers[d:]) for d in range(n + 1)]
    open_: list[_FastNode] = []

    def push(sib: _Siblings, phase: int, pos: int) -> None:
        """Push the sibling at (`phase`, `pos`) of the stream, or the next one that exists."""
        d, g_cost, fin, ranks, ready, fixed, tail, threshold = sib
        order = orders[d]
        layer = layers[d]
        if phase == 0:
            cheap = order.by_cost
            while pos < len(cheap) and layer.lat[cheap[pos]] > threshold:
                pos += 1
            if pos == len(cheap):
                phase, pos = 1, bisect.bisect_right(order.lats, threshold)
        if phase == 1 and pos == len(order.by_lat):
            return
        x = order.by_cost[pos] if phase == 0 else order.by_lat[pos]
        finish = ready + layer.lat[x]
        bound = finish + tail if finish + tail > fixed else fixed
        cost = g_cost + layer.cost[x]
        node = (bound, cost + rest_cost[d + 1], (*ranks, layer.rank[x]), cost, (*fin, finish),
                sib, phase, pos)
        heapq.heappush(open_, node)

    def children(d: int, g_cost: int, fin: tuple[int, ...], ranks: tuple[int, ...]) -> None:
        pd = group.preds[d]
        ready = max([fin[p] for p in pd], default=0)
        fixed = group.entry_bound[d + 1]
        for a, t in group.front_others[d]:
            if fin[a] + t > fixed:
                fixed = fin[a] + t
        tail = group.own_tail[d]
        push((d, g_cost, fin, ranks, ready, fixed, tail, fixed - ready - tail), 0, 0)

    children(0, 0, (), ())
    done: list[tuple[int, int, tuple[int, ...]]] = []
    expanded = 0
    while open_ and len(done) < k:
        bound, _, ranks, cost, fin, sib, phase, pos = heapq.heappop(open_)
        expanded += 1
        push(sib, phase, pos + 1)
        depth = len(ranks)
        if depth == n:
            done.append((cost, bound, ranks))
        else:
            children(depth, cost, fin, ranks)
    return SearchResult(tuple(_plan(group, c, lat, r, False) for c, lat, r in done), expanded)


# The K-fastest search's sibling stream of one parent: (layer, the parent's cost, finish times
# and config ranks, when the layer's inputs are ready, the bound from paths avoiding the layer,
# the fastest path after it, and the latency up to which siblings share that bound).
_Siblings = tuple[int, int, tuple[int, ...], tuple[int, ...], int, int, int, int]
# (latency bound, cost bound, ranks, cost, finish times, siblings, phase, position).
_FastNode = tuple[int, int, tuple[int, ...], int, tuple[int, ...], _Siblings, int, int]
