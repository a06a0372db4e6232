"""InferFair-like (after Peng & Peng, FGCS 2023): Clockwork's core plus a fairness adjuster.

The paper's estimator and adjustment rule are not public (reference/other-seeds.md §C.2); this
is the reconstruction of §C.3, labelled "InferFair-like" in every result [inferred]:

* Estimator (every `window_s`): per AFW queue ("model") i, the arrival rate λ_i (EWMA), the
  solo-run goodput G_i = min(λ_i, μ_i) with μ_i = max_b b / est_i(b) × (instances it could
  use), and its demand D_i = G_i · est_i(1) in instance-seconds per second (and × vCPUs
  in vCPU-seconds per second).
* Attained goodput A_i = jobs of i completed within their stage deadline in the last
  `window_s`; normalised service n_i = A_i / G_i.
* Adjuster: while Σ D_i stays below `overload_at` (70 %) of the cluster's slice instances and
  of its vCPUs (bursts overload it well before the mean does), Clockwork's order (it maximises
  goodput). When it does not, strategies are taken in ascending n_i (bucketed by `epsilon`,
  so near-equal models keep Clockwork's order), i.e. the model furthest below its solo-run
  share goes first.

Everything else (deadlines, drops, p99 estimates, one batch per MIG instance) is Clockwork's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import ClassVar

from esg.policies.clockwork import ClockworkPolicy, Strategy
from esg.policies.toolkit import RateMeter
from esg.policy import Arrival, Completion, Event, Snapshot


class InferFairPolicy(ClockworkPolicy):
    name: ClassVar[str] = "inferfair"

    def __init__(
        self,
        *,
        batches: Sequence[int] = (1, 2, 4, 8),
        buffer_s: float = 0.005,
        window: int = 10,
        estimate_percentile: float = 0.99,
        prior_margin: float = 1.12,
        gpu_units: int = 1,
        window_s: float = 1.0,
        epsilon: float = 0.05,
        overload_at: float = 0.7,
        sample_ttl_s: float = 10.0,
    ) -> None:
        super().__init__(batches=batches, buffer_s=buffer_s, window=window,
                         estimate_percentile=estimate_percentile, prior_margin=prior_margin,
                         gpu_units=gpu_units, sample_ttl_s=sample_ttl_s)
        self.window_s = window_s
        self.epsilon = epsilon
        self.overload_at = overload_at
        self._rates: dict[tuple[str, str], RateMeter] = {}
        self._done: dict[tuple[str, str], deque[float]] = {}
        self._estimate: tuple[float, dict[tuple[str, str], float], bool] | None = None

    def observe(self, event: Event, snapshot: Snapshot) -> None:
        self._estimate = None
        if isinstance(event, Arrival):
            key = (event.job.app, event.job.function)
            self._rates.setdefault(key, RateMeter(self.window_s)).observe(snapshot.now_s)
        elif isinstance(event, Completion) and event.ok:
            # Clockwork dropped every job that could not make its stage deadline before it ran,
            # so a completed job is (up to estimation error) a good one.
            d = event.dispatch
            done = self._done.setdefault((d.app, d.function), deque())
            done.extend([snapshot.now_s] * len(d.job_ids))

    def normalised_service(self, snapshot: Snapshot) -> tuple[dict[tuple[str, str], float], bool]:
        """n_i per queue, and whether the cluster is overloaded: the solo-run demand on slice
        instances or on vCPUs exceeds `overload_at` of what the cluster has."""
        instances = sum(
            sum(g.total_units // self.gpu_units for g in node.gpus) for node in snapshot.nodes
        ) or 1
        vcpus = sum(node.total_vcpu for node in snapshot.nodes) or 1
        gpu_demand = cpu_demand = 0.0
        service: dict[tuple[str, str], float] = {}
        for key, meter in self._rates.items():
            rate = meter.current(snapshot.now_s)
            best_rate, best_cost, best_vcpu, on_gpu = 0.0, 0.0, 0, False
            for batch in self.batches:
                config = self.base_config(key[1], snapshot, batch)
                if config is None:
                    continue
                est = self.estimate_s(key[1], config, snapshot)
                if batch == 1:
                    # Demand at batch 1: under bursts the queues rarely hold a full batch.
                    best_cost, best_vcpu, on_gpu = est, config.vcpu, config.vgpu > 0
                best_rate = max(best_rate, batch / est)
            solo = min(rate, best_rate * (instances if on_gpu else vcpus))
            gpu_demand += solo * best_cost if on_gpu else 0.0
            cpu_demand += solo * best_cost * best_vcpu
            done = self._done.get(key, deque())
            while done and done[0] < snapshot.now_s - self.window_s:
                done.popleft()
            attained = len(done) / self.window_s
            service[key] = attained / solo if solo > 0 else 1.0
        load = max(gpu_demand / instances, cpu_demand / vcpus)
        return service, load > self.overload_at

    def order(self, strategies: list[Strategy], snapshot: Snapshot) -> list[Strategy]:
        # One estimate per decision: the order is asked for again after every dispatch.
        if self._estimate is None or self._estimate[0] != snapshot.now_s:
            self._estimate = (snapshot.now_s, *self.normalised_service(snapshot))
        _, service, overloaded = self._estimate
        if not overloaded:
            return super().order(strategies, snapshot)
        return sorted(strategies, key=lambda s: (
            round(service.get(s.key, 1.0) / self.epsilon), s.priority, s.batch, s.key
        ))
