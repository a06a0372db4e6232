"""L, the unit of the grid's SLOs: the critical path of the cheapest configuration that sustains
the load. An SLO of x × L with x < 1 then cannot be met by running everything cheaply, so a
scheduler has to choose what to pay for; x > 1 leaves slack to batch and queue in.

The paper does not define L (reference/esg.md §0, §5.1); this is our reconstruction. For an
application mix (each application's share of the requests), a cluster, prices and an offered
load λ (mean requests/s of the mix):

1. Every function starts at its cheapest profiled configuration: the least
   `Pricing.cost_per_request` at its profiled mean latency (ties: the faster, then the smaller
   (batch, vCPUs, slice) tuple).
2. The assignment *sustains* λ when λ ≤ capacity = min(vCPUs / D_cpu, slice units / D_gpu) of
   the cluster, where D_cpu = Σ_app share × Σ_f latency_f / batch_f × vcpu_f is the vCPU-seconds
   one request of the mix needs with full batches (D_gpu likewise with slice units). This is
   the mean rate; bursts above it queue.
3. While it does not, the one function change (to any profiled configuration) that raises the
   capacity at the least extra cost per request per request/s of capacity gained is applied.
   The capacity rises with every step, so this ends: when λ is sustained, or when no single
   change raises it (then `sustained` is False and L is of the assignment reached).
4. L of an application = its critical path under that assignment: each function's profiled
   mean latency at its configuration (warm, unqueued, no wait for its batch to fill) plus one
   inter-node transfer of every edge's output. Batch-fill waits are left out on purpose: with
   them, the cheapest (largest) batches would set a lax L at light load; without them even
   1.0 × L asks the cheapest assignment to fill its batches in no time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from esg.model import Config, Profile, Workflow
from esg.pricing import Pricing
from esg.sim.cluster import ClusterSpec


@dataclass(frozen=True)
class Application:
    """What L needs of an application: its DAG, its share of requests, each output's size."""

    workflow: Workflow
    share: float
    output_bytes: Mapping[str, float]


@dataclass(frozen=True)
class SloUnit:
    configs: Mapping[str, Config]
    capacity_rps: float
    sustained: bool
    l_s: Mapping[str, float]


def _cost(profile: Profile, config: Config, pricing: Pricing) -> float:
    return pricing.cost_per_request(config, profile.latency_ms[config])


def cheapest(profile: Profile, pricing: Pricing) -> Config:
    return min(profile.latency_ms, key=lambda c: (
        _cost(profile, c, pricing), profile.latency_ms[c], c.batch, c.vcpu, c.vgpu,
    ))


def capacity_rps(
    apps: Iterable[Application], profiles: Mapping[str, Profile],
    configs: Mapping[str, Config], cluster: ClusterSpec,
) -> float:
    """Requests/s of the mix the cluster sustains with each function at `configs` (rule 2)."""
    cpu_s = gpu_s = 0.0
    for app in apps:
        for function in app.workflow.functions:
            config = configs[function]
            seconds = profiles[function].latency_ms[config] / 1000 / config.batch
            cpu_s += app.share * seconds * config.vcpu
            gpu_s += app.share * seconds * config.vgpu
    limits = [cluster.total_vcpu / cpu_s if cpu_s else float("inf")]
    if gpu_s:
        limits.append(cluster.total_units / gpu_s if cluster.total_units else 0.0)
    return min(limits)


def critical_path_s(
    app: Application, profiles: Mapping[str, Profile], configs: Mapping[str, Config],
    cluster: ClusterSpec,
) -> float:
    """Rule 4: the longest path of profiled latencies plus one transfer per edge."""
    workflow = app.workflow
    finish: dict[str, float] = {}
    for name in workflow.topological_order():
        ready = max(
            (finish[p] + cluster.transfer_s(app.output_bytes[p])
             for p in workflow.predecessors(name)),
            default=0.0,
        )
        finish[name] = ready + profiles[name].latency_ms[configs[name]] / 1000
    return max(finish.values())


def slo_unit(
    apps: tuple[Application, ...], profiles: Mapping[str, Profile], cluster: ClusterSpec,
    load_rps: float, pricing: Pricing,
) -> SloUnit:
    """L of every application at `load_rps` (the module docstring's rules 1-4)."""
    functions = [f for app in apps for f in app.workflow.functions]
    configs = {f: cheapest(profiles[f], pricing) for f in functions}
    capacity = capacity_rps(apps, profiles, configs, cluster)
    while capacity < load_rps:
        best: tuple[float, str, Config, float] | None = None
        for f in functions:
            here = _cost(profiles[f], configs[f], pricing)
            for config in sorted(profiles[f].latency_ms, key=lambda c: (c.batch, c.vcpu, c.vgpu)):
                gained = capacity_rps(apps, profiles, {**configs, f: config}, cluster) - capacity
                if gained <= 1e-9:
                    continue
                price = (_cost(profiles[f], config, pricing) - here) / gained
                if best is None or price < best[0]:
                    best = (price, f, config, capacity + gained)
        if best is None:
            break
        _, function, config, capacity = best
        configs[function] = config
    return SloUnit(
        configs=configs,
        capacity_rps=capacity,
        sustained=capacity >= load_rps,
        l_s={app.workflow.name: critical_path_s(app, profiles, configs, cluster) for app in apps},
    )
