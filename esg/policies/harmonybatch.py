"""HarmonyBatch (Chen et al., IWQoS'24): cost-minimal provisioning with SLO-aware batching.

From the paper and code (reference/other-seeds.md §B): per group, funcProvision picks the
function type (CPU or GPU), its resources and the batch size b that minimise the cost per
request, (1/b)·L_avg·price, subject to the SLO on the *maximum* latency, t_w + L_max ≤ s,
with the batching timeout set greedily to t_w = s − L_max and the batch feasible only if
b ≤ ⌊r·T⌋ + 1 for the arrival rate r (Constraint 9). The planner re-runs periodically on
measured rates (every minute on the per-minute trace); the batch manager sends a batch when it
holds b requests or when the earliest member's timeout expires.

Two-stage merging cannot exist behind the seam, and is not here. HarmonyBatch merges
applications that share a model into one group with one buffer, so that one batch holds the
requests of several applications and fills at their summed rate (Eq. 5's equivalent
timeout); that is all merging buys. Behind the seam a sandbox runs one *function*, and in the
simulator's scenarios no function is shared: two applications that run the same model
(resnet50 in image-classification and in the ensemble) deploy it as two functions
(`ic-resnet50`, `eic-resnet50`). In the daemon one function may serve several workflows, but
a `Dispatch` names one AFW queue, one (application, function), and both drivers dequeue,
record and plan a batch by that application. A merged batch would need a dispatch carrying
jobs of several queues, which the simulator and the daemon's controller would both have to
learn; dispatching each member queue on its own at one configuration is not merging, since
its batches still fill at one application's rate. So every group is a single queue and
Algorithm 1 has nothing to merge.

Fitted here [inferred]: HarmonyBatch has no workflow notion, so each function gets a static,
stage-agnostic SLO share (ESG §6). Its latency model has no cold-start term (the platform's
instances are taken as warm), so it does not read the cold-start estimates, and it pre-warms
nothing. L_max = 1.12 × the profiled mean (the simulator's p99 noise; MIG slices are
spatial, so cGPU's time-slice term of Eq. 4 does not apply). The planner re-runs every
`replan_s` = 1 s (the simulated runs are compressed) on an EWMA of the queue's rate. Cost
uses `esg.pricing`; when no configuration meets the share, the fastest batch-1 configuration
runs. Placement: warm sandbox first, then best fit.
"""

from __future__ import annotations

import math
from typing import ClassVar

from esg.model import Config
from esg.policies.toolkit import RateMeter, SloShares, place
from esg.policy import Action, Arrival, Dispatch, Event, Snapshot, WakeUp
from esg.pricing import DEFAULT_PRICING, Pricing


class HarmonyBatchPolicy:
    name: ClassVar[str] = "harmonybatch"

    def __init__(
        self,
        *,
        pricing: Pricing = DEFAULT_PRICING,
        max_latency_factor: float = 1.12,
        replan_s: float = 1.0,
    ) -> None:
        self.pricing = pricing
        self.max_latency_factor = max_latency_factor
        self.replan_s = replan_s
        self._shares = SloShares()
        self._rates: dict[tuple[str, str], RateMeter] = {}
        self._plans: dict[tuple[str, str], tuple[float, Config, float]] = {}

    def share_s(self, app: str, function: str, snapshot: Snapshot) -> float:
        return self._shares.share_s(app, function, snapshot)

    def provision(self, function: str, slo_s: float, rate: float,
                  snapshot: Snapshot) -> tuple[Config, float]:
        """funcProvision for one queue: the cheapest feasible (config, timeout_s)."""
        table = snapshot.profiles[function].latency_ms
        best: tuple[float, float, Config, float] | None = None
        for config, ms in table.items():
            l_max = ms / 1000 * self.max_latency_factor
            timeout = slo_s - l_max
            if timeout < 0:
                continue
            if config.batch > math.floor(rate * timeout) + 1:
                continue  # the batch would not fill before its timeout (Constraint 9)
            cost = self.pricing.cost_per_request(config, ms)
            candidate = (cost, ms, config, timeout)
            if best is None or candidate[:3] < best[:3]:
                best = candidate
        if best is None:
            fastest = min((c for c in table if c.batch == 1), key=lambda c: (table[c], c))
            return fastest, 0.0
        return best[2], best[3]

    def plan(self, key: tuple[str, str], snapshot: Snapshot) -> tuple[Config, float]:
        cached = self._plans.get(key)
        if cached and snapshot.now_s - cached[0] < self.replan_s:
            return cached[1], cached[2]
        meter = self._rates.get(key)
        rate = meter.current(snapshot.now_s) if meter else 0.0
        config, timeout = self.provision(key[1], self.share_s(*key, snapshot), rate, snapshot)
        self._plans[key] = (snapshot.now_s, config, timeout)
        return config, timeout

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            key = (event.job.app, event.job.function)
            self._rates.setdefault(key, RateMeter(self.replan_s)).observe(snapshot.now_s)
        actions: list[Action] = []
        wake: float | None = None
        for key, _ in sorted(snapshot.queues.items()):
            config, timeout = self.plan(key, snapshot)
            while jobs := snapshot.queues.get(key, ()):
                # Jobs arrive in order and share one timeout, so the head's expires first.
                due = jobs[0].enqueued_s + timeout
                if len(jobs) < config.batch and snapshot.now_s < due:
                    wake = due if wake is None else min(wake, due)
                    break
                where = place(snapshot, key[1], config)
                if where is None:
                    break
                taken = tuple(j.id for j in jobs[: config.batch])
                dispatch = Dispatch(*key, taken, config, where[0], gpu=where[1])
                actions.append(dispatch)
                snapshot = snapshot.reserve(dispatch)
        if wake is not None:
            actions.append(WakeUp(wake))
        return actions
