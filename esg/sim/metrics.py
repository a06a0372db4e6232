"""What one run records, and the metrics of the report computed from it.

Only requests that arrived after the warm-up are measured. A request hits its SLO when it
finished (not dropped, not still running at the horizon) within `slo_s` of its arrival.
Cost is $ per measured request (its share of every batch it was in). The configuration miss
rate counts stage executions that had a planned configuration (from an earlier dispatch's
`plan`, or the dispatch's own plan entry) and ran a different one; it is NaN for policies that
never plan ahead. Fairness is Jain's index over functions of 1 / mean slowdown, where a job's
slowdown is (time from enqueue to completion) / (its batch's execution time).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from esg.model import Config
from esg.policies.toolkit import percentile


@dataclass
class RequestRecord:
    app: str
    start_s: float
    slo_s: float
    measured: bool
    finish_s: float | None = None
    failed: str | None = None
    cost: float = 0.0

    @property
    def latency_s(self) -> float | None:
        if self.failed is not None or self.finish_s is None:
            return None
        return self.finish_s - self.start_s

    @property
    def hit(self) -> bool:
        latency = self.latency_s
        return latency is not None and latency <= self.slo_s + 1e-12


@dataclass(frozen=True)
class BatchRecord:
    app: str
    function: str
    config: Config
    node: str
    start_s: float
    finish_s: float
    exec_s: float
    cold: bool
    jobs: int
    job_times_s: tuple[float, ...]


@dataclass
class RunRecord:
    policy: str
    scenario: str
    total_vcpu: int
    total_units: int
    measure_from_s: float = 0.0
    end_s: float = 0.0
    requests: dict[str, RequestRecord] = field(default_factory=dict)
    batches: list[BatchRecord] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    planned_stages: int = 0
    missed_stages: int = 0
    #: sandboxes pre-warmed (`esg.policy.Prewarm`), and pre-warms ignored for want of room
    prewarms: int = 0
    prewarms_ignored: int = 0

    def stage(self, request_id: str, cost: float, planned: Config | None, used: Config) -> None:
        record = self.requests[request_id]
        record.cost += cost
        if planned is not None and record.measured:
            self.planned_stages += 1
            self.missed_stages += planned != used


@dataclass(frozen=True)
class RunMetrics:
    policy: str
    scenario: str
    requests: int
    slo_hit_rate: float
    drop_rate: float
    cost_per_request: float
    p50_ms: float
    p99_ms: float
    overhead_p50_ms: float
    overhead_p99_ms: float
    config_miss_rate: float
    cpu_util: float
    gpu_util: float
    fairness_jain: float
    cold_start_rate: float
    mean_batch: float
    latencies_ms: tuple[float, ...] = field(repr=False, compare=False, default=())
    #: What the run was (the report sets them; `summarize` cannot know).
    seed: int = 0
    profile_error: str = "0"


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one value takes everything."""
    if not values or not any(values):
        return math.nan
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def summarize(record: RunRecord) -> RunMetrics:
    measured = [r for r in record.requests.values() if r.measured]
    n = len(measured)
    latencies = [r.latency_s * 1000 for r in measured if r.latency_s is not None]
    batches = [b for b in record.batches if b.start_s >= record.measure_from_s]
    span_s = max(record.end_s, 1e-9)
    cpu_busy = sum((b.finish_s - b.start_s) * b.config.vcpu for b in record.batches)
    gpu_busy = sum((b.finish_s - b.start_s) * b.config.vgpu for b in record.batches)
    slowdowns: dict[tuple[str, str], list[float]] = defaultdict(list)
    for b in batches:
        slowdowns[(b.app, b.function)] += [t / b.exec_s for t in b.job_times_s]
    service = [1 / (sum(s) / len(s)) for s in slowdowns.values() if s]
    return RunMetrics(
        policy=record.policy,
        scenario=record.scenario,
        requests=n,
        slo_hit_rate=sum(r.hit for r in measured) / n if n else math.nan,
        drop_rate=sum(r.failed is not None for r in measured) / n if n else math.nan,
        cost_per_request=sum(r.cost for r in measured) / n if n else math.nan,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        overhead_p50_ms=percentile(record.overhead_ms, 0.5),
        overhead_p99_ms=percentile(record.overhead_ms, 0.99),
        config_miss_rate=(
            record.missed_stages / record.planned_stages if record.planned_stages else math.nan
        ),
        cpu_util=cpu_busy / (record.total_vcpu * span_s) if record.total_vcpu else math.nan,
        gpu_util=gpu_busy / (record.total_units * span_s) if record.total_units else math.nan,
        fairness_jain=jain(service),
        cold_start_rate=sum(b.cold for b in batches) / len(batches) if batches else math.nan,
        mean_batch=sum(b.jobs for b in batches) / len(batches) if batches else math.nan,
        latencies_ms=tuple(sorted(latencies)),
    )
