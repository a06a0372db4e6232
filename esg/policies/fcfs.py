"""FCFS with dynamic batching: the simplest baseline (ESG runs a function without a profile so too).

Each AFW queue is served oldest job first. A batch leaves when `max_batch` jobs are waiting or
when the oldest has waited `max_queue_delay_s` (Triton's dynamic batcher), at the function's
fixed configuration (`max_batch`, `vcpu`, `vgpu`) from its `FunctionLimits`. Nodes are tried
warm-first, then by most free vCPUs; a node must have the vCPUs (and a GPU with the units) free,
and a function never has more than `max_instances` batches in flight. When nothing fits, the
jobs stay queued until the next completion frees resources.
"""

from __future__ import annotations

from typing import ClassVar

from esg.dispatch import fits
from esg.model import Config, Job
from esg.policy import (
    Action,
    Dispatch,
    Event,
    FunctionLimits,
    NodeView,
    Snapshot,
    WakeUp,
)


class FcfsPolicy:
    name: ClassVar[str] = "fcfs"

    def __init__(self, default_limits: FunctionLimits | None = None) -> None:
        self._default = default_limits or FunctionLimits()

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        actions: list[Action] = []
        wake_at: float | None = None
        # Oldest head-of-queue first, so that queues are served in arrival order overall.
        keys = sorted(
            (k for k, jobs in snapshot.queues.items() if jobs),
            key=lambda k: (snapshot.queues[k][0].enqueued_s, k),
        )
        for app, function in keys:
            limits = snapshot.limits.get(function, self._default)
            while True:
                jobs = snapshot.queues.get((app, function), ())
                if not jobs:
                    break
                ready_at = jobs[0].enqueued_s + limits.max_queue_delay_s
                if len(jobs) < limits.max_batch and snapshot.now_s < ready_at:
                    wake_at = ready_at if wake_at is None else min(wake_at, ready_at)
                    break
                dispatch = self._place(app, function, jobs, limits, snapshot)
                if dispatch is None:
                    break  # retried on the next completion, which frees resources
                actions.append(dispatch)
                if len(dispatch.job_ids) == len(jobs) and len(keys) == 1:
                    break  # nothing left to place: spare the copy `reserve` makes (hot path)
                snapshot = snapshot.reserve(dispatch)
        if wake_at is not None:
            actions.append(WakeUp(wake_at))
        return actions

    @staticmethod
    def _place(
        app: str,
        function: str,
        jobs: tuple[Job, ...],
        limits: FunctionLimits,
        snapshot: Snapshot,
    ) -> Dispatch | None:
        if limits.max_instances is not None and snapshot.running.get(function, 0) >= (
            limits.max_instances
        ):
            return None
        config = Config(batch=limits.max_batch, vcpu=limits.vcpu, vgpu=limits.vgpu)

        def preference(node: NodeView) -> tuple[int, int, str]:
            return (-node.warm.get((function, config), 0), -node.free_vcpu, node.name)

        for node in sorted(snapshot.nodes, key=preference):
            fit, gpu = fits(node, config)
            if not fit:
                continue
            taken = tuple(job.id for job in jobs[: config.batch])
            return Dispatch(app, function, taken, config, node.name, gpu=gpu)
        return None

