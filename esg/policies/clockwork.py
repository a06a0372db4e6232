"""Clockwork (Gujarati et al., OSDI'20), the controller's infer5 policy, fitted to the seam.

What the code does (reference/other-seeds.md §C.1): every model keeps its requests with a
deadline (arrival + SLO − a 5 ms buffer); each (model, supported batch size) with enough queued
requests is a *strategy* with priority = deadline of the head − estimated execution time of the
batch (its latest start); strategies are taken in ascending priority, ties to the smaller batch;
requests that can no longer meet their deadline are dropped before a batch is formed
(proactive cancellation); execution estimates are the p99 of the last 10 measurements of that
(model, batch). Workers run one action at a time per GPU.

Fitted here [inferred]: a "model" is one AFW queue; a Clockwork worker GPU is one MIG instance
of `gpu_units` (default 1: MIG's hardware isolation gives each instance the predictable,
exclusive executor Clockwork assumes; 7 = whole GPUs, no sharing); a DNN function runs there
with its `FunctionLimits` vCPUs, a host-only function on those vCPUs alone. Deadlines are per
stage: the request's
end-to-end deadline minus the buffer minus the downstream critical path at each later
function's batch-1 estimate. Before any measurement the estimate is the profile's mean × 1.12
(p99 of the simulator's 5 % lognormal noise). Loading/evicting weights is not modelled (the
driver's warm sandboxes stand in for loaded models), so the first batch of a new sandbox
(`Completion.cold_start`) is not timed: Clockwork measures INFER on a loaded model, and on the
daemon that batch also pays the session's one-time initialisation (counted, it made
Clockwork-like drop most calls at light load for the 10 s a measurement lives: at
strict-light, 51 % SLO hits on the daemon against the simulator's 92 %; in the next run, with
the change, 82 % against 90 %).

Ours [inferred]: a measurement counts for `sample_ttl_s` (10 s), then the estimate forgets it
(back to the prior when none is left). Clockwork assumes a GPU's predictable execution; on the
daemon's shared CPU cores a burst inflates the last 10 measurements of a function, the drop
rule then cancels every job of it, no batch of it runs again, and its estimate never comes
back down: its workflows failed for good on the real daemon (issue 12), never in the
simulator, whose executions do not slow under load.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from esg.model import Config, Workflow
from esg.policies.toolkit import downstream_s, percentile, place
from esg.policy import Action, Completion, Dispatch, Drop, Event, Snapshot


@dataclass(frozen=True)
class Strategy:
    """Run `batch` jobs of queue `key` with `config`; `priority` = latest start time (s)."""

    priority: float
    batch: int
    key: tuple[str, str]
    config: Config


class ClockworkPolicy:
    name: ClassVar[str] = "clockwork"

    def __init__(
        self,
        *,
        batches: Sequence[int] = (1, 2, 4, 8),
        buffer_s: float = 0.005,
        window: int = 10,
        estimate_percentile: float = 0.99,
        prior_margin: float = 1.12,
        gpu_units: int = 1,
        sample_ttl_s: float = 10.0,
    ) -> None:
        self.batches = tuple(sorted(batches))
        self.sample_ttl_s = sample_ttl_s
        self.buffer_s = buffer_s
        self.window = window
        self.estimate_percentile = estimate_percentile
        self.prior_margin = prior_margin
        self.gpu_units = gpu_units
        #: (when, seconds) of the last `window` executions per (function, configuration)
        self._samples: dict[tuple[str, Config], deque[tuple[float, float]]] = {}
        # Estimates change only when a batch completes; both caches are cleared then.
        self._estimates: dict[tuple[str, Config], float] = {}
        self._down: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------ estimates

    def base_config(self, function: str, snapshot: Snapshot, batch: int) -> Config | None:
        limits = snapshot.limits.get(function)
        vcpu = limits.vcpu if limits else 1
        profile = snapshot.profiles[function]
        gpu = any(c.vgpu for c in profile.latency_ms)
        config = Config(batch, vcpu, self.gpu_units if gpu else 0)
        return config if config in profile.latency_ms else None

    def estimate_s(self, function: str, config: Config, snapshot: Snapshot) -> float:
        key = (function, config)
        if key not in self._estimates:
            samples = self._samples.get(key)
            self._estimates[key] = (
                percentile([s for _, s in samples], self.estimate_percentile) if samples
                else snapshot.profiles[function].latency_ms[config] / 1000 * self.prior_margin
            )
        return self._estimates[key]

    def downstream(self, workflow: Workflow, snapshot: Snapshot) -> dict[str, float]:
        """Per function of `workflow`: the downstream critical path at batch-1 estimates."""
        if workflow.name in self._down:
            return self._down[workflow.name]
        alone = {}
        for f in workflow.functions:
            config = self.base_config(f, snapshot, 1)
            alone[f] = self.estimate_s(f, config, snapshot) if config else 0.0
        down = {f: downstream_s(workflow, f, alone) for f in workflow.functions}
        self._down[workflow.name] = down
        return down

    # ------------------------------------------------------------ the seam

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Completion) and not event.cold_start:
            # Clockwork times INFER actions on loaded models (a LOAD is an action of its own);
            # a new sandbox's first batch also pays one-time initialisation
            d = event.dispatch
            window = self._samples.setdefault((d.function, d.config), deque(maxlen=self.window))
            window.append((snapshot.now_s, event.exec_s))
            self._estimates.pop((d.function, d.config), None)
            self._down.clear()
        self.forget_old_samples(snapshot.now_s)
        self.observe(event, snapshot)
        return self.schedule(snapshot)

    def forget_old_samples(self, now_s: float) -> None:
        """Measurements older than `sample_ttl_s` no longer count (see the module docstring)."""
        for key, window in self._samples.items():
            if window and window[0][0] < now_s - self.sample_ttl_s:
                while window and window[0][0] < now_s - self.sample_ttl_s:
                    window.popleft()
                self._estimates.pop(key, None)
                self._down.clear()

    def observe(self, event: Event, snapshot: Snapshot) -> None:
        """Hook for subclasses that keep more state (InferFair's estimator)."""

    def order(self, strategies: list[Strategy], snapshot: Snapshot) -> list[Strategy]:
        """Clockwork's order: latest start first-come, ties to the smaller batch, then key."""
        return sorted(strategies, key=lambda s: (s.priority, s.batch, s.key))

    def schedule(self, snapshot: Snapshot) -> list[Action]:
        actions: list[Action] = []
        down = {app: self.downstream(wf, snapshot) for app, wf in snapshot.workflows.items()}
        heads: dict[tuple[str, str], float] = {}
        for (app, function), jobs in snapshot.queues.items():
            one = self.base_config(function, snapshot, 1)
            alone_s = self.estimate_s(function, one, snapshot) if one else 0.0
            # Deadlines grow along a FIFO queue of one application, so the late jobs are a prefix.
            late = []
            for job in jobs:
                if snapshot.now_s + alone_s <= job.deadline_s - self.buffer_s - down[app][function]:
                    break
                late.append(job.id)
            if late:
                actions.append(Drop(app, function, tuple(late), "deadline cannot be met"))
                snapshot = _without(snapshot, (app, function), set(late))
        for key, jobs in snapshot.queues.items():
            if jobs:
                heads[key] = jobs[0].deadline_s - self.buffer_s - down[key[0]][key[1]]
        progress = True
        while progress:
            progress = False
            for strategy in self.order(self.strategies(snapshot, heads), snapshot):
                jobs = snapshot.queues.get(strategy.key, ())
                where = place(snapshot, strategy.key[1], strategy.config)
                if len(jobs) < strategy.batch or where is None:
                    continue
                node, gpu = where
                taken = tuple(j.id for j in jobs[: strategy.batch])
                dispatch = Dispatch(*strategy.key, taken, strategy.config, node, gpu=gpu)
                actions.append(dispatch)
                snapshot = snapshot.reserve(dispatch)
                rest = snapshot.queues[strategy.key]
                if rest:
                    heads[strategy.key] = (
                        rest[0].deadline_s - self.buffer_s - down[strategy.key[0]][strategy.key[1]]
                    )
                progress = True
                break  # the order changes once a queue's head moves on
        return actions

    def strategies(
        self, snapshot: Snapshot, heads: dict[tuple[str, str], float]
    ) -> list[Strategy]:
        """Every (queue, batch) with enough jobs whose batch can still meet the head's deadline."""
        out = []
        for key, jobs in snapshot.queues.items():
            if not jobs:
                continue
            head_deadline = heads[key]
            for batch in self.batches:
                config = self.base_config(key[1], snapshot, batch)
                if config is None or batch > len(jobs):
                    continue
                est = self.estimate_s(key[1], config, snapshot)
                if snapshot.now_s + est > head_deadline and batch > 1:
                    continue  # a smaller batch may still make it
                out.append(Strategy(head_deadline - est, batch, key, config))
        return out


def _without(snapshot: Snapshot, key: tuple[str, str], ids: set[str]) -> Snapshot:
    queues = dict(snapshot.queues)
    queues[key] = tuple(j for j in snapshot.queues[key] if j.id not in ids)
    return replace(snapshot, queues=queues)
