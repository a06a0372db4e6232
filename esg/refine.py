"""Online refinement of one profile point: a pure rule, no clock, no I/O.

The daemon's profile store applies it to every executed batch, and the simulator does the same
where it stands in for the daemon (`esg.sim.refining`). A point is the mean execution time (ms)
of one batch at one configuration, with the number of batches behind it and their spread.
Every real execution adds a sample:

* the first `window` samples make a running mean (Welford), so a young point is the plain
  average of what was seen;
* after that the mean is an exponentially weighted one with weight 1/`window` per sample, so
  the point follows a function whose speed drifts (a noisy neighbour, a warmer cache) and
  forgets samples older than a few windows. Its variance is the matching exponentially weighted
  variance (West, 1979).

A fitted point (filled in by the analytic model, never measured) is replaced by its first
measurement: a measurement beats a fit.

What planners see is the *published* latency, not the running estimate: it moves to the
estimate only when the two differ by more than `rel_change` of the published value, by more
than `abs_change_ms`, and by more than `z` standard errors of the estimate (the spread over the
square root of the samples it averages, at most `window`), so neither a stream of near-identical
executions nor the noise of a jittery function invalidates every planner's cache; a change past
all three bumps the profile version. The thresholds are our choice (the ESG paper says only
that profiles are refined); `RefinePolicy` keeps them in one place.

What planners plan with is `planning_table`: a point that executions refined shows its
published latency; one that only the profiler timed (alone on the machine), or the model
fitted, shows that figure times the function's slowdown under load, the median of published
over profiled latency across the points that have both, on the same kind of device (CPU
points by CPU points, GPU slices by GPU slices: cores shared with the load say little about a
slice of a GPU). The profiler runs one configuration at
a time on an otherwise idle node; under load the load itself, the daemon and the other
sandboxes share the cores. On the workflow benchmark (two shared cores) the factor after its
capacity run was 0.88-1.34 for the image and CNN stages and 1.8-2.5 for the sub-millisecond
ones (`vote` at 2 vCPUs: 0.11 ms alone, 0.16 under load). Without it a planner prefers the
configurations it has never run (they look fastest), and learns otherwise one cold start
later. A point's first execution therefore counts as a change (the profile version moves): it
leaves the scaled set and moves the factor. The factor is our reconstruction; the ESG paper
says nothing on profiles taken alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace

from esg.model import Config


@dataclass(frozen=True)
class RefinePolicy:
    """`window`: samples averaged plainly before the EWMA takes over (its weight is 1/window).
    A published latency changes when the estimate moves more than `rel_change` (relative),
    `abs_change_ms` (absolute) and `z` standard errors away from it."""

    window: int = 20
    rel_change: float = 0.05
    abs_change_ms: float = 0.02
    z: float = 2.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not (self.rel_change >= 0 and self.abs_change_ms >= 0 and self.z >= 0):
            raise ValueError("rel_change, abs_change_ms and z must be >= 0")


DEFAULT_POLICY = RefinePolicy()


@dataclass(frozen=True)
class Point:
    """One configuration's latency: `mean_ms` (the running estimate), `var_ms2` (its spread as
    a variance, ms²), `count` (samples behind it; 0 for a fitted point), `fitted` (filled in by
    the model), `published_ms` (what the profile shows; see the module docstring),
    `executions` (how many of the samples came from real executions rather than the profiler)
    and `profiled_ms` (the profiler's mean, 0 when the profiler never timed it)."""

    mean_ms: float
    var_ms2: float
    count: int
    fitted: bool
    published_ms: float
    executions: int = 0
    profiled_ms: float = 0.0

    @property
    def std_ms(self) -> float:
        return math.sqrt(max(0.0, self.var_ms2))

    @classmethod
    def measured(cls, mean_ms: float, std_ms: float, count: int) -> Point:
        """A point measured `count` times by the profiler (published as measured)."""
        if not (mean_ms > 0 and count >= 1):
            raise ValueError(f"a measured point needs mean_ms > 0 and count >= 1, got "
                             f"{mean_ms}, {count}")
        return cls(mean_ms, std_ms * std_ms, count, False, mean_ms, 0, mean_ms)

    @classmethod
    def fit(cls, latency_ms: float) -> Point:
        """A point filled in by the analytic model."""
        if not latency_ms > 0:
            raise ValueError(f"a fitted latency must be > 0, got {latency_ms}")
        return cls(latency_ms, 0.0, 0, True, latency_ms)


@dataclass(frozen=True)
class Refined:
    """The point after one sample, and whether what planners see changed: its published
    latency, or (its first execution) whether it is scaled by the slowdown under load."""

    point: Point
    changed: bool


def observe(
    point: Point | None, sample_ms: float, policy: RefinePolicy = DEFAULT_POLICY
) -> Refined:
    """`point` (None: never seen) after one execution that took `sample_ms`."""
    if not sample_ms > 0:
        raise ValueError(f"a sample must be > 0 ms, got {sample_ms}")
    if point is None or point.fitted:
        return Refined(Point(sample_ms, 0.0, 1, False, sample_ms, executions=1), True)
    count = point.count + 1
    delta = sample_ms - point.mean_ms
    if count <= policy.window:
        mean = point.mean_ms + delta / count
        # Welford's M2 is var * (n - 1) with the sample variance; keep the population form here
        var = (point.var_ms2 * point.count + delta * (sample_ms - mean)) / count
    else:
        weight = 1.0 / policy.window
        mean = point.mean_ms + weight * delta
        var = (1 - weight) * (point.var_ms2 + weight * delta * delta)
    moved = abs(mean - point.published_ms)
    standard_error = math.sqrt(max(0.0, var) / min(count, policy.window))
    changed = (
        moved > policy.rel_change * point.published_ms
        and moved > policy.abs_change_ms
        and moved > policy.z * standard_error
    )
    published = mean if changed else point.published_ms
    return Refined(replace(point, mean_ms=mean, var_ms2=var, count=count,
                           published_ms=published, executions=point.executions + 1),
                   changed or point.executions == 0)


def slowdown(points: Mapping[Config, Point], on_gpu: bool = False) -> float:
    """How much slower a function runs under load than alone on the CPU (or, `on_gpu`, on
    GPU slices): the median of published over profiled latency across its points of that kind
    that the profiler timed and executions refined; 1 when there are none yet."""
    ratios = [p.published_ms / p.profiled_ms for c, p in points.items()
              if (c.vgpu > 0) == on_gpu and p.executions and p.profiled_ms > 0]
    return statistics.median(ratios) if ratios else 1.0


def planning_table(points: Mapping[Config, Point]) -> dict[Config, float]:
    """The latency (ms) planners see per configuration of one function: the published one
    where executions refined it, the published one times its kind's `slowdown` where they
    have not."""
    factor = {False: slowdown(points), True: slowdown(points, on_gpu=True)}
    return {c: p.published_ms * (1.0 if p.executions else factor[c.vgpu > 0])
            for c, p in points.items()}
