"""INFless (Yang et al., ASPLOS'22) as its public controller does it, on MIG slices.

From the code (reference/esg.md §6.1): batch sizes are tried largest first; for a batch b the
execution-time budget is SLO/2 when b > 1 (half is reserved for batch queuing) else the SLO;
candidate configurations are CPU threads from max(b, 2) down to 2 and GPU shares up to 50 %;
a configuration is kept when its latency t fits that budget and the residual request rate is at
least rps_min = b / (SLO − t) (1 for b = 1); among the kept (node, configuration) pairs the one
with the highest CRE = rps_max / (fragment / slot capacity) wins (throughput-weighted best fit:
fragment = 64·(free vCPU share after) + 142·(free GPU share after), weighted by their GFLOPs);
a batch waits at most batchTimeOut = SLO − t.

Fitted here [inferred]: INFless is a single-function scheduler, so each function gets a static,
stage-agnostic share of the workflow SLO proportional to its batch-1 latency (ESG §6);
"GPU ≤ 50 %" becomes MIG slices of 1–3 units; vCPUs are the profile's levels in [2, max(b, 2)]
(or 1 when the profile has nothing ≥ 2); the residual rate is the queue's measured arrival rate
(EWMA over 1 s windows), standing in for INFless's per-window scale-up; when nothing is
feasible the fastest batch-1 configuration runs. Pre-warming (LSTH) is left to keep-alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from esg.dispatch import fits
from esg.model import Config
from esg.policies.toolkit import RateMeter, SloShares
from esg.policy import Action, Arrival, Dispatch, Event, Snapshot, WakeUp

#: INFless weighs resources by compute capacity: GFLOPs per CPU core and per GPU share.
CPU_GFLOPS = 64.0
GPU_GFLOPS = 142.0


class InflessPolicy:
    name: ClassVar[str] = "infless"

    def __init__(
        self,
        *,
        batches: Sequence[int] = (8, 4, 2, 1),
        max_vgpu: int = 3,
        rate_window_s: float = 1.0,
    ) -> None:
        self.batches = tuple(sorted(batches, reverse=True))
        self.max_vgpu = max_vgpu
        self.rate_window_s = rate_window_s
        self._shares = SloShares()
        self._rates: dict[tuple[str, str], RateMeter] = {}

    def share_s(self, app: str, function: str, snapshot: Snapshot) -> float:
        return self._shares.share_s(app, function, snapshot)

    def candidates(self, function: str, slo_s: float, rate: float,
                   snapshot: Snapshot) -> tuple[int, list[tuple[Config, float]]]:
        """The largest batch with feasible configurations, and those (config, latency_s)."""
        table = snapshot.profiles[function].latency_ms
        for batch in self.batches:
            budget = slo_s / 2 if batch > 1 else slo_s
            kept = []
            for config, ms in table.items():
                if config.batch != batch or config.vgpu > self.max_vgpu:
                    continue
                if not (config.vcpu >= 2 or not any(c.vcpu >= 2 for c in table)):
                    continue
                if config.vcpu > max(batch, 2):
                    continue
                t = ms / 1000
                rps_min = batch / (slo_s - t) if batch > 1 and slo_s > t else 1.0
                if t <= budget and (batch == 1 or rate >= rps_min):
                    kept.append((config, t))
            if kept:
                return batch, kept
        fastest = min((c for c in table if c.batch == 1), key=lambda c: (table[c], c))
        return 1, [(fastest, table[fastest] / 1000)]

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            key = (event.job.app, event.job.function)
            self._rates.setdefault(key, RateMeter(self.rate_window_s)).observe(snapshot.now_s)
        actions: list[Action] = []
        wake: float | None = None
        for (app, function), _ in sorted(snapshot.queues.items()):
            slo_s = self.share_s(app, function, snapshot)
            meter = self._rates.get((app, function))
            rate = meter.current(snapshot.now_s) if meter else 0.0
            while jobs := snapshot.queues.get((app, function), ()):
                batch, kept = self.candidates(function, slo_s, rate, snapshot)
                timeout = min(slo_s - t for _, t in kept)
                ready_at = jobs[0].enqueued_s + max(0.0, timeout)
                if len(jobs) < batch and snapshot.now_s < ready_at:
                    wake = ready_at if wake is None else min(wake, ready_at)
                    break
                best = self._best_fit(kept, snapshot)
                if best is None:
                    break
                config, node, gpu = best
                taken = tuple(j.id for j in jobs[:batch])
                dispatch = Dispatch(app, function, taken, config, node, gpu=gpu)
                actions.append(dispatch)
                snapshot = snapshot.reserve(dispatch)
        if wake is not None:
            actions.append(WakeUp(wake))
        return actions

    @staticmethod
    def _best_fit(kept: list[tuple[Config, float]],
                  snapshot: Snapshot) -> tuple[Config, str, int | None] | None:
        best: tuple[tuple[float, str, Config], Config, str, int | None] | None = None
        for config, t in kept:
            rps_max = config.batch / t
            for node in snapshot.nodes:
                ok, gpu = fits(node, config)
                if not ok:
                    continue
                cpu_after = (node.total_vcpu - node.free_vcpu + config.vcpu) / node.total_vcpu
                gpu_after = 1.0
                if node.gpus:
                    total = sum(g.total_units for g in node.gpus)
                    free = sum(g.free_units for g in node.gpus) - config.vgpu
                    gpu_after = 1 - free / total
                capacity = CPU_GFLOPS * node.total_vcpu + GPU_GFLOPS * 100
                fragment = (CPU_GFLOPS * node.total_vcpu * (1.001 - cpu_after)
                            + GPU_GFLOPS * 100 * (1.001 - gpu_after))
                cre = rps_max / (fragment / capacity)
                score = (-cre, node.name, config)
                if best is None or score < best[0]:
                    best = (score, config, node.name, gpu)
        return None if best is None else best[1:]
