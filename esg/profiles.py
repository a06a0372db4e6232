"""Profile tables: priced search options, what a cluster can run, and fitting from a few points.

A `Profile` (esg.model) maps configurations to mean latency (ms). The search wants options:
(configuration, latency, cost per request), restricted to what the cluster can host and what
the function accepts.

`fit_profile` fills a whole grid from a few measurements with HarmonyBatch's analytic forms
(reference/other-seeds.md B.2), reporting the fit's error at the measured points:

* CPU configurations (vgpu = 0), per batch size b: L(b, c) = α_b · exp(−c / β_b) + γ_b.
  Batch sizes without 3 measured vCPU levels are interpolated linearly in b between the two
  nearest fitted batch sizes (extrapolated from the two nearest at the ends) — our addition.
* GPU configurations (vgpu = g > 0): L(b, g) = (7 / g) · (ξ1 · b + ξ2), HarmonyBatch's
  full-GPU line scaled by the share of the GPU, as its time-slicing model does; with MIG the
  slice's compute scales the same way to first order. vCPUs do not enter (a GPU-bound model).

Measured points keep their measured latency in the table; the forms only fill the gaps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from esg.model import GPU_UNITS, MIG_SIZES, Config, Profile
from esg.policy import NodeView
from esg.pricing import Pricing
from esg.search import Option


@dataclass(frozen=True)
class Capacity:
    """What the largest healthy node can host: vCPUs and, per GPU mode, slice sizes.

    `vgpu_sizes` are the GPU slice sizes some GPU of some healthy node could ever give (MIG:
    only the instance sizes 1, 2, 3, 4, 7 up to the GPU's units; MPS: any share up to them).
    0 (CPU only) is always allowed.
    """

    max_vcpu: int
    vgpu_sizes: frozenset[int]

    @classmethod
    def of(cls, nodes: Iterable[NodeView]) -> Capacity:
        max_vcpu = 0
        sizes = {0}
        for node in nodes:
            if not node.healthy:
                continue
            max_vcpu = max(max_vcpu, node.total_vcpu)
            for gpu in node.gpus:
                valid = MIG_SIZES if gpu.mode == "mig" else range(1, gpu.total_units + 1)
                sizes.update(u for u in valid if u <= gpu.total_units)
        return cls(max_vcpu=max_vcpu, vgpu_sizes=frozenset(sizes))


def priced_options(
    profile: Profile,
    pricing: Pricing,
    capacity: Capacity | None = None,
    max_batch: int | None = None,
) -> list[Option]:
    """The profile's configurations that fit `capacity` and `max_batch`, priced per request."""
    options = []
    # In config order; plain tuples compare several times faster than Config's generated <.
    by_config = sorted(
        profile.latency_ms.items(), key=lambda kv: (kv[0].batch, kv[0].vcpu, kv[0].vgpu)
    )
    for config, latency_ms in by_config:
        if max_batch is not None and config.batch > max_batch:
            continue
        if capacity is not None and (
            config.vcpu > capacity.max_vcpu or config.vgpu not in capacity.vgpu_sizes
        ):
            continue
        options.append(Option(config, latency_ms, pricing.cost_per_request(config, latency_ms)))
    return options


def fastest_ms(profile: Profile) -> float:
    """The profile's smallest latency (any configuration)."""
    return min(profile.latency_ms.values())


# ---------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitReport:
    """How well the analytic forms match the measured points (relative errors, in-sample).

    `cpu` maps batch size to (α, β, γ); `gpu` is (ξ1, ξ2) or None when no GPU point was given.
    """

    function: str
    points: int
    cpu: Mapping[int, tuple[float, float, float]]
    gpu: tuple[float, float] | None
    max_rel_error: float
    mean_rel_error: float


def fit_cpu_curve(
    vcpus: Iterable[float], latency_ms: Iterable[float]
) -> tuple[float, float, float]:
    """Least-squares (α, β, γ) of L(c) = α · exp(−c / β) + γ; needs >= 3 distinct vCPU levels.

    For a fixed β the model is linear in (α, γ), so β is searched on a log grid and refined
    by golden-section search around the best grid point, each step solving (α, γ) exactly.
    """
    c = np.asarray(list(vcpus), dtype=float)
    y = np.asarray(list(latency_ms), dtype=float)
    if len(set(c.tolist())) < 3:
        raise ValueError("fitting α·exp(−c/β)+γ needs at least 3 distinct vCPU levels")

    def solve(beta: float) -> tuple[float, float, float]:
        basis = np.column_stack([np.exp(-c / beta), np.ones_like(c)])
        (alpha, gamma), *_ = np.linalg.lstsq(basis, y, rcond=None)
        residual = float(np.sum((basis @ np.array([alpha, gamma]) - y) ** 2))
        return float(alpha), float(gamma), residual

    grid = np.geomspace(0.05, 200.0, 120)
    errors = [solve(float(b))[2] for b in grid]
    best = int(np.argmin(errors))
    lo, hi = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if solve(math.exp(m1))[2] <= solve(math.exp(m2))[2]:
            hi = m2
        else:
            lo = m1
    beta = math.exp((lo + hi) / 2)
    alpha, gamma, _ = solve(beta)
    return alpha, beta, gamma


def fit_gpu_line(
    batches: Iterable[float], vgpus: Iterable[float], latency_ms: Iterable[float]
) -> tuple[float, float]:
    """Least-squares (ξ1, ξ2) of L(b, g) = (7 / g) · (ξ1 · b + ξ2); needs >= 2 distinct batches."""
    b = np.asarray(list(batches), dtype=float)
    g = np.asarray(list(vgpus), dtype=float)
    y = np.asarray(list(latency_ms), dtype=float) * g / GPU_UNITS
    if len(set(b.tolist())) < 2:
        raise ValueError("fitting ξ1·b+ξ2 needs at least 2 distinct batch sizes")
    (xi1, xi2), *_ = np.linalg.lstsq(np.column_stack([b, np.ones_like(b)]), y, rcond=None)
    return float(xi1), float(xi2)


def fit_profile(
    function: str,
    measured: Mapping[Config, float],
    grid: Iterable[Config],
    version: int = 0,
) -> tuple[Profile, FitReport]:
    """A full profile over `grid` from `measured` points, and the fit's error report.

    Raises ValueError when the points cannot determine a form the grid needs (e.g. GPU
    configurations in the grid but fewer than 2 measured GPU batch sizes).
    """
    cpu_points = [(c, ms) for c, ms in measured.items() if c.vgpu == 0]
    gpu_points = [(c, ms) for c, ms in measured.items() if c.vgpu > 0]
    by_batch: dict[int, list[tuple[Config, float]]] = {}
    for c, ms in cpu_points:
        by_batch.setdefault(c.batch, []).append((c, ms))
    cpu = {
        b: fit_cpu_curve([c.vcpu for c, _ in pts], [ms for _, ms in pts])
        for b, pts in sorted(by_batch.items())
        if len({c.vcpu for c, _ in pts}) >= 3
    }
    gpu = None
    if len({c.batch for c, _ in gpu_points}) >= 2:
        gpu = fit_gpu_line(
            [c.batch for c, _ in gpu_points],
            [c.vgpu for c, _ in gpu_points],
            [ms for _, ms in gpu_points],
        )
    floor_ms = 0.05 * min(measured.values()) if measured else 1e-3

    def predict(config: Config) -> float:
        if config.vgpu > 0:
            if gpu is None:
                raise ValueError(f"{function}: {config} needs GPU points at >= 2 batch sizes")
            value = GPU_UNITS / config.vgpu * (gpu[0] * config.batch + gpu[1])
        else:
            value = _cpu_predict(cpu, config, function)
        return max(value, floor_ms)

    table = {c: predict(c) for c in grid if c not in measured}
    table.update(measured)
    errors = [abs(predict(c) - ms) / ms for c, ms in measured.items() if ms > 0]
    report = FitReport(
        function=function,
        points=len(measured),
        cpu=cpu,
        gpu=gpu,
        max_rel_error=max(errors, default=0.0),
        mean_rel_error=sum(errors) / len(errors) if errors else 0.0,
    )
    return Profile(function, table, version), report


def _cpu_predict(
    cpu: Mapping[int, tuple[float, float, float]], config: Config, function: str
) -> float:
    if not cpu:
        raise ValueError(f"{function}: {config} needs CPU points at >= 3 vCPU levels of one batch")

    def at(batch: int) -> float:
        alpha, beta, gamma = cpu[batch]
        return alpha * math.exp(-config.vcpu / beta) + gamma

    if config.batch in cpu or len(cpu) == 1:
        return at(config.batch if config.batch in cpu else next(iter(cpu)))
    nearest = sorted(cpu, key=lambda b: (abs(b - config.batch), b))[:2]
    b0, b1 = sorted(nearest)
    y0, y1 = at(b0), at(b1)
    return y0 + (y1 - y0) * (config.batch - b0) / (b1 - b0)
