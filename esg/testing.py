"""Builders for tests and benchmarks: jobs, nodes, snapshots, profiles and a brute-force oracle.

Everything here is deterministic (randomness comes in as a seeded `random.Random`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

from esg.model import GPU_UNITS, Config, Job, Profile, Workflow
from esg.policy import FunctionLimits, GpuView, NodeView, Snapshot
from esg.pricing import DEFAULT_PRICING, Pricing
from esg.search import Option, Plan, canonical_order


def job(
    i: int | str,
    *,
    app: str = "app",
    function: str = "f",
    start_s: float = 0.0,
    enqueued_s: float | None = None,
    slo_s: float = 1.0,
    input_node: str | None = None,
) -> Job:
    """A queued job `j<i>` of request `r<i>`, with deadline start + SLO."""
    return Job(
        id=f"j{i}",
        request_id=f"r{i}",
        app=app,
        function=function,
        request_start_s=start_s,
        enqueued_s=start_s if enqueued_s is None else enqueued_s,
        deadline_s=start_s + slo_s,
        input_node=input_node,
    )


def node(
    name: str,
    *,
    vcpu: int = 16,
    free_vcpu: int | None = None,
    gpu_units: Sequence[int] = (GPU_UNITS,),
    mode: str = "mig",
    warm: Mapping[tuple[str, Config], int] | None = None,
    healthy: bool = True,
) -> NodeView:
    """A node with `vcpu` cores and one GPU per entry of `gpu_units` (its free units)."""
    gpus = tuple(GpuView(index=i, free_units=u, mode=mode) for i, u in enumerate(gpu_units))
    return NodeView(
        name=name,
        total_vcpu=vcpu,
        free_vcpu=vcpu if free_vcpu is None else free_vcpu,
        gpus=gpus,
        warm=dict(warm or {}),
        healthy=healthy,
    )


def cluster(
    n: int = 16, *, vcpu: int = 16, gpu_units: Sequence[int] = (GPU_UNITS,)
) -> tuple[NodeView, ...]:
    """ESG's testbed by default: 16 nodes of 16 vCPUs and one 7-unit MIG GPU each."""
    return tuple(node(f"n{i}", vcpu=vcpu, gpu_units=gpu_units) for i in range(n))


def snapshot(
    *,
    now_s: float = 0.0,
    nodes: Iterable[NodeView] = (),
    jobs: Iterable[Job] = (),
    workflows: Iterable[Workflow] = (),
    profiles: Iterable[Profile] = (),
    limits: Mapping[str, FunctionLimits] | None = None,
    running: Mapping[str, int] | None = None,
) -> Snapshot:
    """A snapshot whose AFW queues hold `jobs` (in the given order)."""
    queues: dict[tuple[str, str], tuple[Job, ...]] = {}
    for j in jobs:
        queues[(j.app, j.function)] = (*queues.get((j.app, j.function), ()), j)
    return Snapshot(
        now_s=now_s,
        nodes=tuple(nodes),
        queues=queues,
        workflows={w.name: w for w in workflows},
        profiles={p.function: p for p in profiles},
        limits=dict(limits or {}),
        running=dict(running or {}),
    )


def synthetic_latency_ms(
    base_ms: float,
    config: Config,
    *,
    gpu_speedup: float = 8.0,
    serial: float = 0.1,
    per_item: float = 0.6,
) -> float:
    """A realistic-shaped latency surface: batch grows it sub-linearly (`per_item` of a batch of
    one per extra item), vCPUs shrink it with diminishing returns (Amdahl, `serial` fraction),
    GPU units shrink it further up to `gpu_speedup`. A small `serial` and `per_item` make a
    *wide* surface: nearly every configuration trades latency for cost per request.
    """
    batch_factor = 1.0 + per_item * (config.batch - 1)
    cpu_factor = serial + (1.0 - serial) / config.vcpu
    gpu_factor = (
        1.0 if config.vgpu == 0 else 1.0 / (1.0 + (gpu_speedup - 1) * config.vgpu / GPU_UNITS)
    )
    return base_ms * batch_factor * cpu_factor * gpu_factor


def synthetic_profile(
    function: str,
    base_ms: float,
    *,
    batches: Sequence[int] = (1, 2, 4, 8),
    vcpus: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16),
    vgpus: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7),
    rng: random.Random | None = None,
    noise: float = 0.0,
    version: int = 0,
    gpu_speedup: float = 8.0,
    serial: float = 0.1,
    per_item: float = 0.6,
) -> Profile:
    """A profile over the grid (default 4 × 8 × 8 = 256 configs), optionally with ±noise jitter."""
    table = {}
    for b, v, g in itertools.product(batches, vcpus, vgpus):
        config = Config(b, v, g)
        ms = synthetic_latency_ms(
            base_ms, config, gpu_speedup=gpu_speedup, serial=serial, per_item=per_item
        )
        if rng is not None and noise:
            ms *= 1.0 + rng.uniform(-noise, noise)
        table[config] = ms
    return Profile(function, table, version)


def options_of(profile: Profile, pricing: Pricing = DEFAULT_PRICING) -> list[Option]:
    """The profile's configurations priced as search options."""
    return [
        Option(c, ms, pricing.cost_per_request(c, ms))
        for c, ms in sorted(profile.latency_ms.items())
    ]


def critical_path(
    order: Sequence[str], edges: Iterable[tuple[str, str]], latency: Mapping[str, Fraction]
) -> Fraction:
    """Longest path through the DAG (functions in topological `order`) of the given latencies."""
    preds: dict[str, list[str]] = {f: [] for f in order}
    for a, b in edges:
        preds[b].append(a)
    finish: dict[str, Fraction] = {}
    for f in order:
        finish[f] = max((finish[p] for p in preds[f]), default=Fraction(0)) + latency[f]
    return max(finish.values(), default=Fraction(0))


def brute_force(
    functions: Sequence[str],
    edges: Iterable[tuple[str, str]],
    options: Mapping[str, Sequence[Option]],
    budget_ms: float,
    k: int,
) -> list[Plan]:
    """The oracle: every plan enumerated, compared in exact arithmetic, top K returned.

    Feasible plans by (cost, latency, configs); when none is feasible, the K fastest by
    (latency, cost, configs), marked infeasible. Same contract as `esg.search.esg_1q`.
    """
    edge_list = list(edges)
    order = canonical_order(functions, edge_list)
    rows = []
    for choice in itertools.product(*(options[f] for f in order)):
        cost = sum((Fraction(o.cost) for o in choice), Fraction(0))
        lat = critical_path(
            order,
            edge_list,
            {f: Fraction(o.latency_ms) for f, o in zip(order, choice, strict=True)},
        )
        configs = tuple((o.config.batch, o.config.vcpu, o.config.vgpu) for o in choice)
        rows.append((cost, lat, configs, choice))

    def fits(lat: Fraction) -> bool:
        return budget_ms == math.inf or (budget_ms > -math.inf and lat <= Fraction(budget_ms))

    feasible = [r for r in rows if fits(r[1])]
    if feasible:
        best = sorted(feasible, key=lambda r: (r[0], r[1], r[2]))[:k]
    else:
        best = sorted(rows, key=lambda r: (r[1], r[0], r[2]))[:k]
    return [
        Plan(
            float(cost),
            float(lat),
            bool(feasible),
            {f: o.config for f, o in zip(order, choice, strict=True)},
        )
        for cost, lat, _, choice in best
    ]
