"""Search options of one function and their per-profile preparation.

An `Option` is one way to run a function: configuration, latency (ms), cost per request ($).
`prepare_options` does, once per profile version, what every search of a group containing the
function needs: validation, the sort by key (cost, latency, config), the K-dominance filter
(see `esg.search`) and exact integer copies of the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from esg.model import Config


@dataclass(frozen=True)
class Option:
    """One way to run one function: its configuration, latency (ms) and cost per request ($)."""

    config: Config
    latency_ms: float
    cost: float


def common_scale(values: Iterable[float]) -> int:
    """The smallest power of two D such that every value times D is an integer."""
    return max((v.as_integer_ratio()[1] for v in values), default=1)


def scaled(value: float, scale: int) -> int:
    numerator, denominator = value.as_integer_ratio()
    return numerator * (scale // denominator)


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
    #: Positions of the options no other option beats on both latency and cost (ties: the
    #: first in latency, then cost order), by latency ascending.
    pareto: tuple[int, ...] = ()


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
