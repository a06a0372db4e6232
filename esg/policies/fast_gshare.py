"""FaST-GShare (Gu et al., ICPP'23): efficiency-first autoscaling with best-fit packing.

From the paper, slides and autoscaler code (reference/esg.md §6.2): each function's profiled
configurations are ranked by RPR (resource per request, ascending); the autoscaler runs
⌊λ / rps_eff⌋ replicas of the most efficient configuration plus one replica of the smallest
configuration that still covers the residual rate (argmin rps_p − r with rps_p > r); pods are
packed by maximal-rectangles best fit; only configurations within the function's SLO are
eligible; there is no batching logic of its own.

Fitted here [inferred]: single-function, so each function gets a static stage-agnostic SLO share
(ESG §6); resource of a configuration = vgpu / 7 + vcpu / 16 (a full GPU and a full node's
CPUs weigh the same; the RPR formula is not published); batch 1 only; a replica is a concurrent
batch slot of that configuration, and jobs beyond the replicas wait in the queue (so bursts
queue until the next 1-second rescale, the "slower jobs" ESG reports); best fit on MIG = the
GPU with the fewest free units, then the node with the fewest free vCPUs, ignoring warmth.
When no configuration meets the share, the fastest batch-1 one is the only replica type.
"""

from __future__ import annotations

import math
from typing import ClassVar

from esg.model import GPU_UNITS, Config
from esg.policies.toolkit import NodeKey, RateMeter, SloShares, place
from esg.policy import Action, Arrival, Completion, Dispatch, Event, NodeView, Snapshot


class FastGSharePolicy:
    name: ClassVar[str] = "fast-gshare"

    def __init__(
        self,
        *,
        node_vcpu: int = 16,
        rescale_s: float = 1.0,
    ) -> None:
        self.node_vcpu = node_vcpu
        self.rescale_s = rescale_s
        self._shares = SloShares()
        self._rates: dict[tuple[str, str], RateMeter] = {}
        self._pool: dict[tuple[str, str], dict[Config, int]] = {}
        self._pool_at: dict[tuple[str, str], float] = {}
        self._busy: dict[tuple[str, str, Config], int] = {}

    def share_s(self, app: str, function: str, snapshot: Snapshot) -> float:
        return self._shares.share_s(app, function, snapshot)

    def resource(self, config: Config) -> float:
        return config.vgpu / GPU_UNITS + config.vcpu / self.node_vcpu

    def pool(self, key: tuple[str, str], snapshot: Snapshot) -> dict[Config, int]:
        """Replicas per configuration for the queue's current rate (recomputed every rescale_s)."""
        if key in self._pool and snapshot.now_s - self._pool_at[key] < self.rescale_s:
            return self._pool[key]
        app, function = key
        table = snapshot.profiles[function].latency_ms
        slo_s = self.share_s(app, function, snapshot)
        eligible = [c for c, ms in table.items() if c.batch == 1 and ms / 1000 <= slo_s]
        if not eligible:
            eligible = [min((c for c in table if c.batch == 1), key=lambda c: (table[c], c))]
        rps = {c: 1000 / table[c] for c in eligible}
        best = min(eligible, key=lambda c: (self.resource(c) / rps[c], c))
        meter = self._rates.get(key)
        rate = meter.current(snapshot.now_s) if meter else 0.0
        replicas = max(1, math.floor(rate / rps[best]))
        pool = {best: replicas}
        residual = rate - replicas * rps[best]
        if residual > 0:
            covering = [c for c in eligible if rps[c] > residual]
            if covering:
                extra = min(covering, key=lambda c: (rps[c] - residual, c))
                pool[extra] = pool.get(extra, 0) + 1
        self._pool[key], self._pool_at[key] = pool, snapshot.now_s
        return pool

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            key = (event.job.app, event.job.function)
            self._rates.setdefault(key, RateMeter(self.rescale_s)).observe(snapshot.now_s)
        elif isinstance(event, Completion):
            d = event.dispatch
            self._busy[(d.app, d.function, d.config)] -= 1
        actions: list[Action] = []
        for key, _ in sorted(snapshot.queues.items()):
            for config, replicas in sorted(self.pool(key, snapshot).items()):
                slot = (*key, config)
                while (jobs := snapshot.queues.get(key, ())) and self._busy.get(slot, 0) < replicas:
                    where = place(snapshot, key[1], config, key=_best_fit(config))
                    if where is None:
                        break
                    dispatch = Dispatch(*key, (jobs[0].id,), config, where[0], gpu=where[1])
                    actions.append(dispatch)
                    snapshot = snapshot.reserve(dispatch)
                    self._busy[slot] = self._busy.get(slot, 0) + 1
        return actions


def _best_fit(config: Config) -> NodeKey:
    def key(node: NodeView, gpu: int | None) -> tuple[int, int, str]:
        left = next((g.free_units for g in node.gpus if g.index == gpu), 0) - config.vgpu
        return (left if config.vgpu else 0, node.free_vcpu - config.vcpu, node.name)

    return key
