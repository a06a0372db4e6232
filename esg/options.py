"""Search options of one function and their per-profile preparation.

An `Option` is one way to run a function: configuration, latency (ms), cost per request ($).
`prepare_options` does, once per profile version, what every search of a group containing the
function needs: validation, the sort by key (cost, latency, config), the K-dominance filter
(see `esg.search`) and exact integer copies of the numbers.
"""

from __future__ import annotations

import bisect
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
    """Validate, sort and K-dominance-filter one function's options. Raises ValueError.

    Latencies and costs must be binary floats (an int is fine up to 2**53): they are compared
    and scaled to integers exactly. The sorts are numpy's; the filter is one O(n log K) pass.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not options:
        raise ValueError(f"{function!r} has no options")
    keys = [(c.batch, c.vcpu, c.vgpu) for c in (o.config for o in options)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{function!r} lists a configuration twice")
    lat = _values(options, [o.latency_ms for o in options], function)
    cost = _values(options, [o.cost for o in options], function)
    # rank[i]: the position of options[i].config in config order (Config orders like its key).
    rank = np.empty(len(keys), dtype=np.intp)
    rank[sorted(range(len(keys)), key=keys.__getitem__)] = np.arange(len(keys))
    order = np.lexsort((rank, lat, cost))  # the key (cost, latency, config)
    if len(options) > k:
        order = order[_kept(lat, cost, rank, k)[order]]
    kept_lat, kept_cost = lat[order], cost[order]
    by_speed = np.lexsort((kept_cost, kept_lat))  # stable: ties stay in key order
    speed_cost = kept_cost[by_speed]
    # Pareto-optimal: cheaper than everything before it in (latency, cost) order.
    front = np.ones(len(order), dtype=bool)
    front[1:] = speed_cost[1:] < np.minimum.accumulate(speed_cost)[:-1]
    lat_ints, lat_scale = exact_integers(kept_lat)
    cost_ints, cost_scale = exact_integers(kept_cost)
    positions = order.tolist()
    return PreparedOptions(
        options=tuple(options[i] for i in positions),
        ranks=tuple(rank[order].tolist()),
        considered=len(options),
        k=k,
        cost=cost_ints,
        lat=lat_ints,
        cost_scale=cost_scale,
        lat_scale=lat_scale,
        pareto=tuple(by_speed[front].tolist()),
    )


def _values(options: Sequence[Option], values: list[float], function: str) -> np.ndarray:
    """`values` as float64, checked finite, non-negative and exactly representable."""
    array = np.array(values, dtype=np.float64)
    if not (np.isfinite(array).all() and (array >= 0).all() and array.tolist() == values):
        for o in options:  # the first offending option, for the message
            if not (math.isfinite(o.latency_ms) and math.isfinite(o.cost)):
                raise ValueError(f"{function!r}: {o.config} has a non-finite latency or cost")
            if o.latency_ms < 0 or o.cost < 0:
                raise ValueError(f"{function!r}: {o.config} has a negative latency or cost")
        raise ValueError(f"{function!r}: a latency or cost is not exactly a binary float")
    return array


def _kept(lat: np.ndarray, cost: np.ndarray, rank: np.ndarray, k: int) -> np.ndarray:
    """Per option, whether fewer than k others dominate it.

    d dominates c when cost_d <= cost_c, lat_d <= lat_c and (cost_d < cost_c or config_d <
    config_c): exactly the options before c in (cost, config) order that are no slower. So
    walking that order, c is kept when fewer than k of the options before it have a latency
    <= lat_c, i.e. when lat_c is below the k-th smallest latency seen so far.
    """
    by_cost = np.lexsort((rank, cost))
    smallest: list[float] = []  # the k smallest latencies so far, ascending
    kept = np.ones(len(lat), dtype=bool)
    flags = []
    for latency in lat[by_cost].tolist():
        if len(smallest) < k:
            bisect.insort(smallest, latency)
            flags.append(True)
        elif latency < smallest[-1]:
            bisect.insort(smallest, latency)
            del smallest[-1]
            flags.append(True)
        else:
            flags.append(False)
    kept[by_cost] = flags
    return kept


def exact_integers(values: np.ndarray) -> tuple[tuple[int, ...], int]:
    """(values times D as exact ints, D) for the smallest power of two D that makes every
    value an integer (`common_scale` and `scaled`, vectorised).

    A positive float is M * 2**(e - 53) with M = mantissa * 2**53 an integer below 2**53
    (`np.frexp`); its denominator is 2**(53 - e - (trailing zero bits of M)), or 1.
    """
    if not len(values):
        return (), 1
    mantissa, exponent = np.frexp(values)
    whole = (mantissa * 2.0**53).astype(np.int64)
    _, low_exponent = np.frexp((whole & -whole).astype(np.float64))  # 2**tz -> tz + 1
    denominator = np.where(whole == 0, 0, 53 - exponent - (low_exponent - 1))
    power = max(int(denominator.max()), 0)
    if int(exponent.max()) + power > 1024:  # values * 2**power would overflow a float
        scale = 1 << power
        return tuple(scaled(v, scale) for v in values.tolist()), scale
    return tuple(int(v) for v in np.ldexp(values, power).tolist()), 1 << power
