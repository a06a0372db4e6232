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

* Per group, once (`compile_group`, cached by the caller): options sorted by key; options that K
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
  the returned ones stay feasible), so `PlanCache` reuses the answer there: a cache that can
  never change an answer. An infeasible answer is valid for every budget below the fastest
  plan's latency.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from esg.model import Config


@dataclass(frozen=True)
class Option:
    """One way to run one function: its configuration, latency (ms) and cost per request ($)."""

    config: Config
    latency_ms: float
    cost: float


@dataclass(frozen=True)
class Plan:
    """One configuration per function of the group (in canonical order) and what it adds up to."""

    cost: float
    latency_ms: float
    feasible: bool
    configs: Mapping[str, Config]


@dataclass(frozen=True)
class SearchResult:
    """Plans in priority order and how many search nodes were expanded to find them."""

    plans: tuple[Plan, ...]
    expanded: int

    @property
    def feasible(self) -> bool:
        return bool(self.plans) and self.plans[0].feasible


def canonical_order(functions: Iterable[str], edges: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The group's functions in lexicographic topological order (the order plans are keyed in).

    Raises ValueError when the edges form a cycle.
    """
    indegree = dict.fromkeys(functions, 0)
    succs: dict[str, list[str]] = {f: [] for f in indegree}
    for a, b in edges:
        succs[a].append(b)
        indegree[b] += 1
    ready = [f for f, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        f = heapq.heappop(ready)
        order.append(f)
        for s in succs[f]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(ready, s)
    if len(order) != len(indegree):
        raise ValueError("the group's edges form a cycle")
    return tuple(order)


def _common_scale(values: Iterable[float]) -> int:
    """The smallest power of two D such that every value times D is an integer."""
    return max((v.as_integer_ratio()[1] for v in values), default=1)


def _scaled(value: float, scale: int) -> int:
    numerator, denominator = value.as_integer_ratio()
    return numerator * (scale // denominator)


@dataclass(frozen=True)
class _Layer:
    """The surviving options of one function, sorted by key, with exact integer costs."""

    options: tuple[Option, ...]
    cost: tuple[int, ...]
    lat: tuple[int, ...]
    rank: tuple[int, ...]  # position of the config in config order (compares like the config)
    by_lat: tuple[int, ...]  # the latencies sorted, for the time blade's cut point
    by_rank: Mapping[int, Option]


class CompiledGroup:
    """A group prepared for repeated searches: filtered layers, exact scales, bound tables.

    Build it with `compile_group`; it is immutable afterwards and safe to share.
    """

    def __init__(
        self,
        functions: tuple[str, ...],
        edges: tuple[tuple[str, str], ...],
        layers: tuple[_Layer, ...],
        cost_scale: int,
        lat_scale: int,
        k: int,
        considered: int,
    ) -> None:
        self.functions = functions
        self.edges = edges
        self.layers = layers
        self.cost_scale = cost_scale
        self.lat_scale = lat_scale
        self.k = k
        #: options before dominance filtering (for reports)
        self.considered = considered
        index = {f: i for i, f in enumerate(functions)}
        n = len(functions)
        self.preds: tuple[tuple[int, ...], ...] = tuple(
            tuple(sorted(index[a] for a, b in edges if b == f)) for f in functions
        )
        succs = [sorted(index[b] for a, b in edges if a == f) for f in functions]
        self.min_lat = tuple(min(layer.lat) for layer in layers)
        # tail[j]: longest path starting at j with every function at its fastest option.
        tail = [0] * n
        for j in reversed(range(n)):
            tail[j] = self.min_lat[j] + max((tail[s] for s in succs[j]), default=0)
        # head[j]: earliest finish of j's predecessors with everything at its fastest option.
        head = [0] * n
        for j in range(n):
            head[j] = max((head[p] + self.min_lat[p] for p in self.preds[j]), default=0)
        self.tail_after = tuple(max((tail[s] for s in succs[j]), default=0) for j in range(n))
        self.head = tuple(head)
        self.fastest = max(tail, default=0)  # the critical path of the fastest plan
        # Bound tables per depth d (functions 0..d-1 assigned): the latency bound of a node is
        # max(entry_bound[d], max(finish[a] + ta for a, ta in frontier[d])).
        self.frontier: list[tuple[tuple[int, int], ...]] = []
        self.entry_bound: list[int] = []
        # For the node that assigns function j: its own tail, and the other frontier entries.
        self.own_tail = tuple(self.tail_after)
        self.front_others: list[tuple[tuple[int, int], ...]] = []
        for d in range(n + 1):
            frontier = []
            for a in range(d):
                later = [tail[s] for s in succs[a] if s >= d]
                if later or not succs[a]:
                    frontier.append((a, max(later, default=0)))
            self.frontier.append(tuple(frontier))
            self.entry_bound.append(
                max((tail[u] for u in range(d, n) if not self.preds[u]), default=0)
            )
        for j in range(n):
            self.front_others.append(tuple((a, t) for a, t in self.frontier[j + 1] if a != j))
        self.is_chain = all(self.preds[j] == ((j - 1,) if j else ()) for j in range(n))
        self._fronts: list[tuple[list[int], list[int]]] | None = None
        self._layer_fronts: list[tuple[list[int], list[int]]] | None = None

    def remaining_cost(self, depth: int, fin: tuple[int, ...], budget: int) -> tuple[int, float]:
        """An admissible, budget-aware bound on the cost of functions depth..n-1 given the
        finish times `fin` of the assigned ones (see `fronts` and `layer_fronts`), and a lower
        bound on the latency of every plan below it that costs less than the bound (those
        miss the budget: the time blade cut them, and the cache must know where).
        """
        if self.is_chain:
            lats, costs = self.fronts()[depth]
            i = bisect.bisect_right(lats, budget - fin[-1]) - 1
            # Completions cheaper than costs[i] are slower than lats[i + 1] (a Pareto front).
            slower = fin[-1] + lats[i + 1] if i + 1 < len(lats) else math.inf
            return costs[i], slower
        # A DAG: each unassigned function must fit between its earliest start and the
        # fastest tail after it; the cheapest option that does is a bound for each. A plan
        # below that costs less uses, for some function, an option slower than that window.
        fronts = self.layer_fronts()
        finish = list(fin)
        total, slowest_cut = 0, math.inf
        for j in range(depth, len(self.functions)):
            start = max([finish[p] for p in self.preds[j]], default=0)
            finish.append(start + self.min_lat[j])
            lats, costs = fronts[j]
            i = bisect.bisect_right(lats, budget - start - self.tail_after[j]) - 1
            total += costs[i]
            if i + 1 < len(lats):
                slowest_cut = min(slowest_cut, start + lats[i + 1] + self.tail_after[j])
        return total, slowest_cut

    def layer_fronts(self) -> list[tuple[list[int], list[int]]]:
        """Per function, the Pareto front of its own options (for DAG groups)."""
        if self._layer_fronts is None:
            self._layer_fronts = [
                _pareto(list(zip(layer.lat, layer.cost, strict=True))) for layer in self.layers
            ]
        return self._layer_fronts

    def fronts(self) -> list[tuple[list[int], list[int]]]:
        """For a chain, per depth d: the Pareto front (latencies ascending, costs descending)
        of completing functions d..n-1. Built on first use, then reused for every budget.

        `min cost of a completion within L` = the cost of the front's last point with
        latency <= L: the exact cheapest completion, an admissible, budget-aware bound.
        """
        if self._fronts is None:
            n = len(self.functions)
            fronts: list[tuple[list[int], list[int]]] = [([0], [0])] * (n + 1)
            for d in range(n - 1, 0, -1):
                layer = self.layers[d]
                lats, costs = fronts[d + 1]
                points = [
                    (lx + lr, cx + cr)
                    for lx, cx in zip(layer.lat, layer.cost, strict=True)
                    for lr, cr in zip(lats, costs, strict=True)
                ]
                fronts[d] = _pareto(points)
            self._fronts = fronts
        return self._fronts


def _pareto(points: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The points no other point beats on both latency and cost, by latency ascending."""
    points.sort()
    lats: list[int] = []
    costs: list[int] = []
    for lat, cost in points:
        if not costs or cost < costs[-1]:
            lats.append(lat)
            costs.append(cost)
    return lats, costs


@dataclass(frozen=True)
class PreparedOptions:
    """One function's options validated, sorted by key and filtered by K-dominance.

    The per-profile precomputation: build it once per profile version (`prepare_options`) and
    pass it to `compile_group` for every group the function is in, with any K <= `k`.
    `ranks[i]` is the position of `options[i].config` among all the function's configurations.
    """

    options: tuple[Option, ...]
    ranks: tuple[int, ...]
    considered: int
    k: int
    # Exact integers: cost[i] / cost_scale == options[i].cost (same for latency).
    cost: tuple[int, ...] = ()
    lat: tuple[int, ...] = ()
    cost_scale: int = 1
    lat_scale: int = 1


def prepare_options(
    options: Sequence[Option], k: int, function: str = "function"
) -> PreparedOptions:
    """Validate, sort and K-dominance-filter one function's options. Raises ValueError."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not options:
        raise ValueError(f"{function!r} has no options")
    if len({o.config for o in options}) != len(options):
        raise ValueError(f"{function!r} lists a configuration twice")
    for o in options:
        if not (math.isfinite(o.latency_ms) and math.isfinite(o.cost)):
            raise ValueError(f"{function!r}: {o.config} has a non-finite latency or cost")
        if o.latency_ms < 0 or o.cost < 0:
            raise ValueError(f"{function!r}: {o.config} has a negative latency or cost")
    rank_of = {c: i for i, c in enumerate(sorted(o.config for o in options))}
    ordered = sorted(options, key=lambda o: (o.cost, o.latency_ms, o.config))
    if len(ordered) > k:
        cost = np.array([o.cost for o in ordered])
        lat = np.array([o.latency_ms for o in ordered])
        rank = np.array([rank_of[o.config] for o in ordered])
        # dominates[d, c]: option d dominates option c (see the module docstring).
        dominates = (
            (cost[:, None] <= cost[None, :])
            & (lat[:, None] <= lat[None, :])
            & ((cost[:, None] < cost[None, :]) | (rank[:, None] < rank[None, :]))
        )
        keep = dominates.sum(axis=0) < k
        ordered = [o for o, kept in zip(ordered, keep.tolist(), strict=True) if kept]
    cost_scale = _common_scale(o.cost for o in ordered)
    lat_scale = _common_scale(o.latency_ms for o in ordered)
    return PreparedOptions(
        options=tuple(ordered),
        ranks=tuple(rank_of[o.config] for o in ordered),
        considered=len(options),
        k=k,
        cost=tuple(_scaled(o.cost, cost_scale) for o in ordered),
        lat=tuple(_scaled(o.latency_ms, lat_scale) for o in ordered),
        cost_scale=cost_scale,
        lat_scale=lat_scale,
    )


def compile_group(
    functions: Sequence[str],
    edges: Iterable[tuple[str, str]],
    options: Mapping[str, Sequence[Option] | PreparedOptions],
    k: int,
) -> CompiledGroup:
    """Prepare a group for `search`. Raises ValueError on input no search could use.

    `options` per function are raw options or `PreparedOptions` (prepared for a K >= k).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    edge_list = tuple((a, b) for a, b in edges)
    members = set(functions)
    for a, b in edge_list:
        if a not in members or b not in members:
            raise ValueError(f"edge {a} -> {b} leaves the group {sorted(members)}")
    order = canonical_order(functions, edge_list)
    prepared = []
    for f in order:
        given = options.get(f, ())
        if isinstance(given, PreparedOptions):
            if given.k < k:
                raise ValueError(f"options of {f!r} were prepared for K={given.k} < {k}")
            prepared.append(given)
        else:
            prepared.append(prepare_options(given, k, f))
    # Scales are powers of two, so the largest is a multiple of every other one.
    cost_scale = max(p.cost_scale for p in prepared)
    lat_scale = max(p.lat_scale for p in prepared)
    layers = tuple(_layer(p, cost_scale, lat_scale) for p in prepared)
    considered = sum(p.considered for p in prepared)
    return CompiledGroup(order, edge_list, layers, cost_scale, lat_scale, k, considered)


def _layer(prepared: PreparedOptions, cost_scale: int, lat_scale: int) -> _Layer:
    cost_shift = cost_scale // prepared.cost_scale
    lat_shift = lat_scale // prepared.lat_scale
    cost_ints = prepared.cost if cost_shift == 1 else tuple(c * cost_shift for c in prepared.cost)
    lat_ints = prepared.lat if lat_shift == 1 else tuple(v * lat_shift for v in prepared.lat)
    return _Layer(
        options=prepared.options,
        cost=cost_ints,
        lat=lat_ints,
        rank=prepared.ranks,
        by_lat=tuple(sorted(lat_ints)),
        by_rank=dict(zip(prepared.ranks, prepared.options, strict=True)),
    )


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
    return _search(group, _budget_units(group, budget_ms))[0]


def _budget_units(group: CompiledGroup, budget_ms: float) -> int | None:
    """The budget in the group's exact latency units, rounded down (None: no budget)."""
    if math.isnan(budget_ms):
        raise ValueError("budget_ms must be a number, got nan")
    if budget_ms == math.inf:
        return None
    if budget_ms == -math.inf:
        return -1
    return math.floor(Fraction(budget_ms) * group.lat_scale)


# A search's answer and the budgets (exact units, lo <= budget < hi) on which it is valid.
_Valid = tuple[SearchResult, float, float]


def _search(group: CompiledGroup, budget: int | None) -> _Valid:
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


def _cheapest(group: CompiledGroup, budget: int | None) -> _Valid:
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

    Rare (the budget is already lost), so every child is pushed rather than generated lazily:
    with the critical path as the first key, siblings in latency order need not have
    non-decreasing bounds.
    """
    n, k, layers = len(group.functions), group.k, group.layers
    rest_cost = [sum(min(layer.cost) for layer in layers[d:]) for d in range(n + 1)]
    open_: list[tuple[int, int, tuple[int, ...], int, int, tuple[int, ...]]] = []

    def push_children(d: int, g_cost: int, fin: tuple[int, ...], ranks: tuple[int, ...]) -> None:
        layer = layers[d]
        ready = max([fin[p] for p in group.preds[d]], default=0)
        bound_entry, front = group.entry_bound[d + 1], group.frontier[d + 1]
        for x in range(len(layer.options)):
            new_fin = (*fin, ready + layer.lat[x])
            bound = max([bound_entry, *(new_fin[a] + tail for a, tail in front)])
            cost = g_cost + layer.cost[x]
            node = (bound, cost + rest_cost[d + 1], (*ranks, layer.rank[x]), d + 1, cost, new_fin)
            heapq.heappush(open_, node)

    push_children(0, 0, (), ())
    done: list[tuple[int, int, tuple[int, ...]]] = []
    expanded = 0
    while open_ and len(done) < k:
        bound, _, ranks, depth, cost, fin = heapq.heappop(open_)
        expanded += 1
        if depth == n:
            done.append((cost, bound, ranks))
        else:
            push_children(depth, cost, fin, ranks)
    return SearchResult(tuple(_plan(group, c, lat, r, False) for c, lat, r in done), expanded)


class PlanCache:
    """Compiled groups and search answers, reused only where they are provably the same.

    `key` must identify the group's content (functions, edges, option tables and K): callers
    use (function names, profile versions, pricing, K, ...). For one key the cache keeps the
    last few answers with the budget interval on which each is valid (see the module
    docstring), so a hit returns exactly what a fresh search would. Bounded, least recently
    used first out; deterministic.
    """

    def __init__(self, max_groups: int = 1024, answers_per_group: int = 16) -> None:
        self._groups: OrderedDict[Hashable, tuple[CompiledGroup, list[_Valid]]] = OrderedDict()
        self._max_groups = max_groups
        self._answers = answers_per_group
        self.hits = 0
        self.misses = 0

    def group(self, key: Hashable, build: Callable[[], CompiledGroup]) -> CompiledGroup:
        return self._entry(key, build)[0]

    def search(
        self, key: Hashable, build: Callable[[], CompiledGroup], budget_ms: float
    ) -> SearchResult:
        group, answers = self._entry(key, build)
        budget = _budget_units(group, budget_ms)
        for i, (result, lo, hi) in enumerate(answers):
            # Nothing cut (hi infinite): the answer holds for an unlimited budget too.
            if (hi == math.inf) if budget is None else (lo <= budget < hi):
                self.hits += 1
                answers.insert(0, answers.pop(i))
                return result
        self.misses += 1
        answer = _search(group, budget)
        if budget is None:
            answer = (answer[0], answer[1], math.inf)
        answers.insert(0, answer)
        del answers[self._answers :]
        return answer[0]

    def _entry(
        self, key: Hashable, build: Callable[[], CompiledGroup]
    ) -> tuple[CompiledGroup, list[_Valid]]:
        entry = self._groups.get(key)
        if entry is None:
            entry = (build(), [])
            self._groups[key] = entry
            while len(self._groups) > self._max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return entry
