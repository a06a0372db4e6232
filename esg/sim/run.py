"""One policy on one workflow file: what `python -m esg.sim run` computes.

Pure apart from the injected `timer` (the wall clock that measures each policy call): the
arrivals come from the settings and a seeded RNG, the cluster from `ClusterSpec`.

* **Arrivals**: `requests` measured requests, `interval_ms` apart, or a Poisson process of
  `rate_rps` (seeded), starting after `warmup_s` seconds of warm-up requests at the same pace.
  Warm-up requests are not measured and their cold starts take no time, so the policy meets
  the measured requests with the sandboxes its own choices need (as in `python -m esg.sim
  report`).
* **Cluster**: `nodes` nodes of the paper's testbed shape (16 vCPUs, one 7-unit MIG GPU).
  `cold_start_ms` replaces the cluster's cold start (250 ms, +750 ms for a GPU slice) by one
  time for every sandbox; 0 means no cold starts.
* **Execution** (`esg.sim.execution`): by default what runs is the profile up to 5 % noise;
  `execution` makes it wrong (systematic factor, noise, interference), and `charge_overhead`
  delays each dispatch by the wall time of the policy call that made it.
* **Per-function limits** the baselines run at (the workflow file gives none; our choice): the
  largest batch listed, at the (vCPUs, slice) shape of the fastest configuration of that
  batch, waiting at most 5 ms for a batch to fill. Planning policies treat the largest batch
  as the model's limit and may use the cold-start time as their estimate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from esg.model import Config
from esg.policy import FunctionLimits, Policy
from esg.pricing import DEFAULT_PRICING, Pricing
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import EngineSettings, Simulation
from esg.sim.execution import ExecutionModel
from esg.sim.metrics import summarize
from esg.sim.workflow_file import WorkflowFile
from esg.sim.workloads import Scenario


@dataclass(frozen=True)
class RunSettings:
    """How `run_workflow` drives the simulation (see the module docstring)."""

    nodes: int = 16
    interval_ms: float | None = 500.0
    rate_rps: float | None = None
    requests: int = 200
    warmup_s: float = 0.0
    cold_start_ms: float | None = None
    seed: int = 0
    execution: ExecutionModel = field(default_factory=ExecutionModel)
    charge_overhead: bool = False
    #: The policies' profiles refined by every warm batch, as on the daemon (`esg.sim.refining`).
    refine_profiles: bool = False

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.requests < 1:
            raise ValueError("nodes and requests must be >= 1")
        if (self.interval_ms is None) == (self.rate_rps is None):
            raise ValueError("give either interval_ms or rate_rps")
        for name in ("interval_ms", "rate_rps"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        cold = 0.0 if self.cold_start_ms is None else self.cold_start_ms
        if not (self.warmup_s >= 0 and cold >= 0):
            raise ValueError("warmup_s and cold_start_ms must be >= 0")

    def cluster(self) -> ClusterSpec:
        if self.cold_start_ms is None:
            return ClusterSpec(nodes=self.nodes)
        return ClusterSpec(
            nodes=self.nodes,
            cold_start_cpu_s=self.cold_start_ms / 1000.0,
            cold_start_gpu_extra_s=0.0,
        )

    def arrivals(self) -> list[float]:
        """Arrival times (s): the warm-up's, then the measured requests' from `warmup_s`."""
        rng = random.Random(f"{self.seed}:arrivals")

        def gap() -> float:
            if self.interval_ms is not None:
                return self.interval_ms / 1000.0
            assert self.rate_rps is not None
            return rng.expovariate(self.rate_rps)

        times, t = [], 0.0
        while t < self.warmup_s:
            times.append(t)
            t += gap()
        t = self.warmup_s
        for _ in range(self.requests):
            times.append(t)
            t += gap()
        return times


def baseline_limits(
    tables: Mapping[str, Mapping[Config, float]], cluster: ClusterSpec
) -> dict[str, FunctionLimits]:
    """Per function: the largest batch listed at the shape of its fastest configuration."""
    limits = {}
    for function, table in tables.items():
        largest = max(c.batch for c in table)
        shape = min((ms, c) for c, ms in table.items() if c.batch == largest)[1]
        limits[function] = FunctionLimits(
            max_batch=largest,
            max_queue_delay_s=0.005,
            vcpu=shape.vcpu,
            vgpu=shape.vgpu,
            cold_start_ms=cluster.cold_start_cpu_s * 1000.0,
            cold_start_gpu_ms=cluster.cold_start_gpu_extra_s * 1000.0,
        )
    return limits


def run_workflow(
    spec: WorkflowFile,
    policy: Policy,
    settings: RunSettings,
    timer: Callable[[], float],
    pricing: Pricing = DEFAULT_PRICING,
) -> dict[str, Any]:
    """Simulate `policy` serving `spec` and summarise the measured requests as JSON values."""
    cluster = settings.cluster()
    workflow = spec.workflow
    scenario = Scenario(
        name=workflow.name,
        workflows={workflow.name: workflow},
        profiles=spec.profiles(),
        limits=baseline_limits(spec.tables, cluster),
        output_bytes=dict.fromkeys(workflow.functions, 0.0),
        arrivals=tuple((t, workflow.name) for t in settings.arrivals()),
        measure_from_s=settings.warmup_s,
    )
    engine = EngineSettings(
        execution=settings.execution, seed=settings.seed, pricing=pricing,
        charge_overhead=settings.charge_overhead, refine_profiles=settings.refine_profiles,
    )
    record = Simulation(scenario, policy, cluster, timer=timer, settings=engine).run()
    metrics = summarize(record)
    critical_ms, _ = spec.critical_path()
    return {
        "workflow": workflow.name,
        "policy": policy.name,
        "requests": metrics.requests,
        "seed": settings.seed,
        "profile_error": settings.execution.profile_error,
        "slo_ms": spec.slo_ms,
        "min_critical_path_ms": critical_ms,
        "slo_hit_rate": metrics.slo_hit_rate,
        "p50_ms": metrics.p50_ms,
        "p99_ms": metrics.p99_ms,
        "cost_per_request": metrics.cost_per_request,
        "drop_rate": metrics.drop_rate,
        "cold_start_rate": metrics.cold_start_rate,
        "mean_batch": metrics.mean_batch,
        "overhead_p50_ms": metrics.overhead_p50_ms,
        "overhead_p99_ms": metrics.overhead_p99_ms,
    }
