"""Fill a profile's unmeasured configurations from its measured ones: pure.

First choice is `esg.profiles.fit_profile` (HarmonyBatch's forms: per batch size
L(c) = α·exp(−c/β) + γ over vCPUs, linear between batch sizes; a scaled line for GPU slices).
Its exp-decay form needs three vCPU levels, which a node with one or two cores cannot give. Then
— our reconstruction, no paper covers it — each measured vCPU level gets a least-squares line
in the batch size, L(b) = p·b + q (a level measured at one batch size takes the shape of the
nearest level that has a line, scaled through its point), and GPU slices keep fit_profile's
line. Every filled value is at least 5 % of the fastest measured one, as in fit_profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from esg.model import GPU_UNITS, Config
from esg.profiles import fit_gpu_line, fit_profile

FLOOR_SHARE = 0.05


def fill(
    function: str, measured: Mapping[Config, float], grid: Iterable[Config]
) -> dict[Config, float]:
    """Latency (ms) of every configuration of `grid` not in `measured`. ValueError (saying
    what to measure) when the points cannot determine one."""
    if not measured:
        raise ValueError(f"{function}: no measured point to fit from")
    wanted = [c for c in grid if c not in measured]
    if not wanted:
        return {}
    try:
        profile, _ = fit_profile(function, measured, wanted)
        return {c: profile.latency_ms[c] for c in wanted}
    except ValueError:
        pass
    return _fill_by_batch_lines(function, measured, wanted)


def _fill_by_batch_lines(
    function: str, measured: Mapping[Config, float], wanted: list[Config]
) -> dict[Config, float]:
    floor = FLOOR_SHARE * min(measured.values())
    by_vcpu: dict[int, dict[int, float]] = {}
    for c, ms in measured.items():
        if c.vgpu == 0:
            by_vcpu.setdefault(c.vcpu, {})[c.batch] = ms
    lines = {
        v: _line(list(points), list(points.values()))
        for v, points in by_vcpu.items() if len(points) >= 2
    }
    gpu_points = [(c, ms) for c, ms in measured.items() if c.vgpu > 0]
    out: dict[Config, float] = {}
    for c in wanted:
        if c.vgpu > 0:
            if not gpu_points:
                raise ValueError(f"{function}: {c} needs GPU points at >= 2 batch sizes")
            xi1, xi2 = fit_gpu_line([p.batch for p, _ in gpu_points],
                                    [p.vgpu for p, _ in gpu_points],
                                    [ms for _, ms in gpu_points])
            value = GPU_UNITS / c.vgpu * (xi1 * c.batch + xi2)
        else:
            value = _cpu_value(function, c, by_vcpu, lines)
        out[c] = max(value, floor)
    return out


def _line(batches: list[int], latency_ms: list[float]) -> tuple[float, float]:
    """Least-squares (p, q) of L(b) = p·b + q."""
    b = np.asarray(batches, dtype=float)
    basis = np.column_stack([b, np.ones_like(b)])
    (p, q), *_ = np.linalg.lstsq(basis, np.asarray(latency_ms, dtype=float), rcond=None)
    return float(p), float(q)


def _cpu_value(
    function: str,
    config: Config,
    by_vcpu: Mapping[int, Mapping[int, float]],
    lines: Mapping[int, tuple[float, float]],
) -> float:
    if config.vcpu in lines:
        p, q = lines[config.vcpu]
        return p * config.batch + q
    if not lines:
        raise ValueError(f"{function}: {config} needs CPU points at 2 batch sizes of one vCPU "
                         "count (or 3 vCPU counts of one batch size); profile more points")
    reference = min(lines, key=lambda v: (abs(v - config.vcpu), v))
    p, q = lines[reference]
    own = by_vcpu.get(config.vcpu)
    if not own:  # no point at this vCPU count: the nearest level's line as it is
        return p * config.batch + q
    batch, ms = next(iter(own.items()))
    at_point = p * batch + q
    return (p * config.batch + q) * (ms / at_point) if at_point > 0 else ms
