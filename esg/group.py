"""A group of functions compiled for repeated searches: filtered layers in exact integers,
latency bound tables, and the Pareto fronts behind the budget-aware cost bound.

`compile_group` takes raw options or `PreparedOptions` per function; the result is immutable
apart from lazily built fronts (deterministic) and is what `esg.cache.PlanCache` keeps.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from esg.options import Option, PreparedOptions, prepare_options


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


@dataclass(frozen=True)
class _Layer:
    """The surviving options of one function, sorted by key, with exact integer costs."""

    options: tuple[Option, ...]
    cost: tuple[int, ...]
    lat: tuple[int, ...]
    rank: tuple[int, ...]  # position of the config in config order (compares like the config)
    by_lat: tuple[int, ...]  # the latencies sorted, for the time blade's cut point
    by_rank: Mapping[int, Option]
    pareto: tuple[int, ...]  # the layer's Pareto-optimal options, by latency ascending


@dataclass(frozen=True)
class _SpeedOrder:
    """One layer's option indices by (cost, rank) and by (latency, cost, rank)."""

    by_cost: tuple[int, ...]
    by_lat: tuple[int, ...]
    lats: tuple[int, ...]  # the latencies in by_lat order


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
        self._speed_orders: list[_SpeedOrder] | None = None

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

    def speed_orders(self) -> list[_SpeedOrder]:
        """Per function, its options in the two orders the K-fastest search walks (built on
        first use): by (cost, rank), and by (latency, cost, rank) with the sorted latencies."""
        if self._speed_orders is None:
            orders = []
            for layer in self.layers:
                xs = range(len(layer.options))
                cheap = sorted(xs, key=lambda x: (layer.cost[x], layer.rank[x]))
                fast = sorted(xs, key=lambda x: (layer.lat[x], layer.cost[x], layer.rank[x]))
                orders.append(_SpeedOrder(
                    tuple(cheap), tuple(fast), tuple(layer.lat[x] for x in fast)
                ))
            self._speed_orders = orders
        return self._speed_orders

    def layer_fronts(self) -> list[tuple[list[int], list[int]]]:
        """Per function, the Pareto front of its own options (for DAG groups)."""
        if self._layer_fronts is None:
            self._layer_fronts = [
                ([layer.lat[i] for i in layer.pareto], [layer.cost[i] for i in layer.pareto])
                for layer in self.layers
            ]
        return self._layer_fronts

    def fronts(self) -> list[tuple[list[int], list[int]]]:
        """For a chain, per depth d: the Pareto front (latencies ascending, costs descending)
        of completing functions d..n-1. Built on first use, then reused for every budget.

        `min cost of a completion within L` = the cost of the front's last point with
        latency <= L: the exact cheapest completion, an admissible, budget-aware bound.
        """
        if self._fronts is None:
            # Only a layer's own Pareto-optimal options can be on the front of a completion
            # (swapping a dominated option for its dominator never makes a point worse).
            n = len(self.functions)
            own = self.layer_fronts()
            fronts: list[tuple[list[int], list[int]]] = [([0], [0])] * (n + 1)
            if n > 1:
                fronts[n - 1] = own[n - 1]
            for d in range(n - 2, 0, -1):
                fronts[d] = pareto_sum(own[d], fronts[d + 1])
            self._fronts = fronts
        return self._fronts


# Relative error of a float sum of two correctly rounded floats is below 2**-51; a margin of
# 2**-50 makes the float intervals [lo, hi] below certain to hold the exact sums.
_MARGIN = 2.0**-50


def pareto_sum(
    a: tuple[list[int], list[int]], b: tuple[list[int], list[int]]
) -> tuple[list[int], list[int]]:
    """The Pareto front (latencies ascending, costs descending) of every point of front `a`
    plus every point of front `b`, in exact integers.

    Vectorised in float64 first, only to drop points certainly beaten: a point whose float
    interval lies strictly above another's on both latency and cost is strictly dominated
    whatever the rounding. The few that remain (the front and its near ties) are added and
    filtered exactly.
    """
    (a_lats, a_costs), (b_lats, b_costs) = a, b
    try:
        lat = (np.array(a_lats, dtype=np.float64)[:, None]
               + np.array(b_lats, dtype=np.float64)[None, :]).ravel()
        cost = (np.array(a_costs, dtype=np.float64)[:, None]
                + np.array(b_costs, dtype=np.float64)[None, :]).ravel()
    except OverflowError:  # integers beyond float range: exactly, all of them
        return _pareto([(la + lb, ca + cb) for la, ca in zip(a_lats, a_costs, strict=True)
                        for lb, cb in zip(b_lats, b_costs, strict=True)])
    by_hi = np.argsort(lat * (1 + _MARGIN), kind="stable")
    hi_lat = lat[by_hi] * (1 + _MARGIN)
    cheapest_hi = np.minimum.accumulate(cost[by_hi] * (1 + _MARGIN))
    # Points whose whole interval is below this one's on latency: the first `before` by hi.
    before = np.searchsorted(hi_lat, lat * (1 - _MARGIN), side="left")
    beaten = (before > 0) & (cheapest_hi[np.maximum(before - 1, 0)] < cost * (1 - _MARGIN))
    width = len(b_lats)
    points = [
        (a_lats[i // width] + b_lats[i % width], a_costs[i // width] + b_costs[i % width])
        for i in np.flatnonzero(~beaten).tolist()
    ]
    return _pareto(points)


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
    cost_ints = prepared.cost if cost_shift == 1 else tuple(map(cost_shift.__mul__, prepared.cost))
    lat_ints = prepared.lat if lat_shift == 1 else tuple(map(lat_shift.__mul__, prepared.lat))
    return _Layer(
        options=prepared.options,
        cost=cost_ints,
        lat=lat_ints,
        rank=prepared.ranks,
        by_lat=tuple(sorted(lat_ints)),
        by_rank=dict(zip(prepared.ranks, prepared.options, strict=True)),
        pareto=prepared.pareto,
    )
