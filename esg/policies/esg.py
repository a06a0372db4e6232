"""ESG as a policy behind the seam: plan every queued stage, dispatch the first plan that fits.

On every event (arrival, completion, timer) each non-empty AFW queue is looked at, the one whose
oldest job has the earliest deadline first:

1. Its function's group (`esg.slo`) is planned by ESG_1Q (`esg.search`) with the time actually
   left: budget = (earliest deadline among the jobs a batch would take − now) − what later
   groups are promised. Only functions with a profile join the plan.
2. Partial batch: when the best plan wants more jobs than are queued, the policy waits
   (WakeUp) as long as the cheapest plan runnable with the jobs already queued still meets the
   budget, and dispatches that plan when the wait is over or more jobs came. A plan runnable
   now may use a batch configuration larger than the queue: its batch latency is kept (a safe
   bound) and its cost shared by the jobs actually there.
3. ESG_Dispatch (`esg.dispatch`) takes the plans in priority order and places the first that
   fits a node; nothing fits: the jobs stay queued and the next completion retries.
4. Infeasible group budget: while the end-to-end SLO can still be met (time left >= fastest
   path through this group and the later ones), the fastest plans run, to win time back. Once
   it cannot (the request is late whatever happens), `late="cheapest"` (default) runs the
   cheapest plan runnable now: the most requests per resource, so that late work does not
   starve requests that can still make it; `late="fastest"` keeps running the fastest plans.
   Nothing is dropped: a late answer is still an answer, and dropping is admission control's.
5. Cold starts (reconstruction; the paper's ESG_Dispatch only prefers warm invokers): with
   `cold_start_ms` > 0, a plan whose first configuration has no idle warm sandbox that fits
   must meet the budget minus `cold_start_ms`; a plan on a warm configuration wins when it
   meets the budget and is no dearer than the best cold one.

Functions without a profile (a function the daemon deployed a moment ago) are run FCFS-style
at their `FunctionLimits` (max_batch, vcpu, vgpu), waiting at most `max_queue_delay_s` for a
batch to fill, until the profiler provides a table.

Settings (keyword only, all with defaults): `k` plans per search (8), `group_size` (3),
`pricing` (a `Pricing`, a mapping or YAML text; default `configs/pricing.yaml`'s values),
`wait_for_batch` (True), `min_wait_ms` (0.5: shorter waits dispatch at once),
`no_slo_wait_s` (0.0: how long to wait for a batch when a job has no deadline), `late`
("cheapest" or "fastest"), `cold_start_ms` (0.0: planning ignores cold starts, as the paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from esg.cache import PlanCache
from esg.dispatch import candidate_nodes, fits, place
from esg.model import Config, Job, Workflow
from esg.policy import Action, Dispatch, Event, FunctionLimits, Snapshot, WakeUp
from esg.pricing import Pricing, parse_pricing
from esg.profiles import Capacity
from esg.search import CompiledGroup, Plan, SearchResult, compile_group
from esg.slo import SloSplit, split_slo
from esg.tables import OptionTables, fastest_by_function

_Outcome = Dispatch | float | None  # a dispatch, a time to look again, or keep waiting
LATE_CHOICES = ("cheapest", "fastest")


@dataclass(frozen=True)
class _Stage:
    """One AFW queue being planned: its group's members (head first) and its time."""

    app: str
    function: str
    members: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    budget_ms: float  # for this group: time left minus what later groups are promised
    left_ms: float  # until the earliest deadline among the jobs a batch would take
    min_after_ms: float  # fastest the later groups can possibly be


class EsgPolicy:
    name: ClassVar[str] = "esg"

    def __init__(
        self,
        *,
        k: int = 8,
        group_size: int = 3,
        pricing: Pricing | Mapping[str, Any] | str | None = None,
        wait_for_batch: bool = True,
        min_wait_ms: float = 0.5,
        no_slo_wait_s: float = 0.0,
        late: str = "cheapest",
        cold_start_ms: float = 0.0,
        default_limits: FunctionLimits | None = None,
    ) -> None:
        if k < 1 or group_size < 1:
            raise ValueError(f"k and group_size must be >= 1, got k={k}, group_size={group_size}")
        if late not in LATE_CHOICES:
            raise ValueError(f"late must be one of {LATE_CHOICES}, got {late!r}")
        if cold_start_ms < 0 or min_wait_ms < 0 or no_slo_wait_s < 0:
            raise ValueError("cold_start_ms, min_wait_ms and no_slo_wait_s must be >= 0")
        self.k = k
        self.group_size = group_size
        self.pricing = pricing if isinstance(pricing, Pricing) else parse_pricing(pricing)
        self.wait_for_batch = wait_for_batch
        self.min_wait_ms = min_wait_ms
        self.no_slo_wait_s = no_slo_wait_s
        self.late = late
        self.cold_start_ms = cold_start_ms
        self.default_limits = default_limits or FunctionLimits()
        self.cache = PlanCache()
        self.tables = OptionTables(self.pricing, k)
        self._splits: dict[tuple[Any, ...], SloSplit] = {}

    # ------------------------------------------------------------------ the seam

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        del event  # every event is a reason to look at every queue again
        actions: list[Action] = []
        wake_at: float | None = None
        capacity = Capacity.of(snapshot.nodes)
        queues = [(k, jobs) for k, jobs in snapshot.queues.items() if jobs]
        queues.sort(key=lambda kv: (kv[1][0].deadline_s, kv[0]))
        for key, _ in queues:
            while jobs := snapshot.queues.get(key, ()):
                if not any(n.healthy and n.free_vcpu > 0 for n in snapshot.nodes):
                    return [*actions, WakeUp(wake_at)] if wake_at is not None else actions
                outcome = self._decide(key, jobs, snapshot, capacity)
                if isinstance(outcome, Dispatch):
                    actions.append(outcome)
                    snapshot = snapshot.reserve(outcome)
                    continue
                if outcome is not None:
                    wake_at = outcome if wake_at is None else min(wake_at, outcome)
                break
        if wake_at is not None:
            actions.append(WakeUp(wake_at))
        return actions

    # ------------------------------------------------------------------ one queue

    def _decide(
        self, key: tuple[str, str], jobs: tuple[Job, ...], snapshot: Snapshot, capacity: Capacity
    ) -> _Outcome:
        app, function = key
        limits = snapshot.limits.get(function)
        cap = None if limits is None else limits.max_instances
        if cap is not None and snapshot.running.get(function, 0) >= cap:
            return None  # a completion of this function will call again
        profile = snapshot.profiles.get(function)
        options = () if profile is None else self._priced(function, snapshot, capacity)
        if not options:
            return self._unprofiled(app, function, jobs, snapshot, limits or self.default_limits)
        widest = max(o.config.batch for o in options)
        stage = self._stage(app, function, jobs[:widest], snapshot, capacity)
        plans = self._plans(stage, jobs, snapshot, capacity)
        if isinstance(plans, float):
            return plans
        placement = place(plans, function, jobs, snapshot.nodes, f"{app}/{function}")
        if placement is None:
            return None
        taken = tuple(j.id for j in jobs[: placement.config.batch])
        return Dispatch(
            app,
            function,
            taken,
            placement.config,
            placement.node,
            gpu=placement.gpu,
            plan=dict(placement.plan.configs),
        )

    def _stage(
        self,
        app: str,
        function: str,
        batch: tuple[Job, ...],
        snapshot: Snapshot,
        capacity: Capacity,
    ) -> _Stage:
        workflow = self._workflow(app, function, snapshot)
        split = self._split(workflow, snapshot, capacity)
        members, edges = split.remaining(function)
        members = tuple(f for f in members if f == function or self._priced(f, snapshot, capacity))
        edges = tuple((a, b) for a, b in edges if a in members and b in members)
        left_ms = (min(j.deadline_s for j in batch) - snapshot.now_s) * 1000.0
        reserved_ms = split.group(function).reserved_after_ms
        return _Stage(
            app,
            function,
            members,
            edges,
            left_ms - reserved_ms,
            left_ms,
            split.min_after_ms(function),
        )

    def _plans(
        self, stage: _Stage, jobs: tuple[Job, ...], snapshot: Snapshot, capacity: Capacity
    ) -> tuple[Plan, ...] | float:
        """The plans to dispatch from, in priority order, or when to look again."""
        only, budget_ms = self._warm_or_cold(stage, snapshot, capacity)
        result = self._search(stage, snapshot, capacity, budget_ms, None, only)
        if not result.feasible:
            # plans[0] is the fastest plan: the group alone already misses its budget.
            fastest_ms = result.plans[0].latency_ms + stage.min_after_ms
            if self.late == "fastest" or stage.left_ms >= fastest_ms:
                return result.plans
            return self._search(stage, snapshot, capacity, math.inf, len(jobs), None).plans
        if result.plans[0].configs[stage.function].batch <= len(jobs):
            return result.plans
        now = self._search(stage, snapshot, capacity, budget_ms, len(jobs), only)
        if not now.feasible:
            return result.plans  # odd profile: only the fuller batch is fast enough
        wait_until = self._wait_until(jobs, snapshot, budget_ms - now.plans[0].latency_ms)
        return now.plans if wait_until is None else wait_until

    def _warm_or_cold(
        self, stage: _Stage, snapshot: Snapshot, capacity: Capacity
    ) -> tuple[frozenset[Config] | None, float]:
        """Head configurations to keep (None: all) and the budget to plan with (rule 5)."""
        if not self.cold_start_ms:
            return None, stage.budget_ms
        cold_budget = stage.budget_ms - self.cold_start_ms
        cold = self._search(stage, snapshot, capacity, cold_budget, None, None)
        runnable = {o.config for o in self._priced(stage.function, snapshot, capacity)}
        warm = _warm_configs(stage.function, snapshot) & runnable
        if warm:
            hot = self._search(stage, snapshot, capacity, stage.budget_ms, None, warm)
            if hot.feasible and (not cold.feasible or hot.plans[0].cost <= cold.plans[0].cost):
                return warm, stage.budget_ms
        if cold.feasible:
            return None, cold_budget
        # Not even a cold plan makes it: plan as if warm, so that the sandbox started now has
        # the configuration later requests want.
        return None, stage.budget_ms

    def _wait_until(
        self, jobs: tuple[Job, ...], snapshot: Snapshot, slack_ms: float
    ) -> float | None:
        """When to look again if waiting for a fuller batch still meets the budget, else None."""
        if not self.wait_for_batch:
            return None
        if math.isfinite(slack_ms):
            if slack_ms < self.min_wait_ms:
                return None
            # Wake half a min_wait early: the plan then still has slack (rounding of the clock
            # cannot make it infeasible) and less than min_wait of it, so it is dispatched.
            return snapshot.now_s + (slack_ms - self.min_wait_ms / 2) / 1000.0
        until = jobs[0].enqueued_s + self.no_slo_wait_s
        return until if until > snapshot.now_s else None

    def _unprofiled(
        self,
        app: str,
        function: str,
        jobs: tuple[Job, ...],
        snapshot: Snapshot,
        limits: FunctionLimits,
    ) -> _Outcome:
        """FCFS with dynamic batching at the function's own limits (no profile to plan with)."""
        ready_at = jobs[0].enqueued_s + limits.max_queue_delay_s
        if len(jobs) < limits.max_batch and snapshot.now_s < ready_at:
            return ready_at
        config = Config(batch=max(1, limits.max_batch), vcpu=max(1, limits.vcpu), vgpu=limits.vgpu)
        taken = jobs[: config.batch]
        for node in candidate_nodes(snapshot.nodes, function, config, taken, f"{app}/{function}"):
            ok, gpu = fits(node, config)
            if ok:
                ids = tuple(j.id for j in taken)
                return Dispatch(app, function, ids, config, node.name, gpu=gpu)
        return None

    # ------------------------------------------------------------------ planning inputs

    def _search(
        self,
        stage: _Stage,
        snapshot: Snapshot,
        capacity: Capacity,
        budget_ms: float,
        jobs: int | None,
        only: frozenset[Config] | None,
    ) -> SearchResult:
        """ESG_1Q over the stage's group; the head may run `jobs` jobs, configs in `only`."""
        members, edges, head = stage.members, stage.edges, stage.members[0]
        profiles = snapshot.profiles
        key = (
            tuple(
                (f, self.tables.generation(profiles[f]), self._max_batch(f, snapshot))
                for f in members
            ),
            edges,
            capacity,
            self.pricing,
            self.k,
            jobs,
            only,
        )

        def build() -> CompiledGroup:
            tables = {
                f: self.tables.prepared(
                    profiles[f],
                    capacity,
                    self._max_batch(f, snapshot),
                    jobs if f == head else None,
                    only if f == head else None,
                )
                for f in members
            }
            return compile_group(members, edges, tables, self.k)

        return self.cache.search(key, build, budget_ms)

    def _priced(self, function: str, snapshot: Snapshot, capacity: Capacity) -> tuple[Any, ...]:
        profile = snapshot.profiles.get(function)
        if profile is None:
            return ()
        return self.tables.priced(profile, capacity, self._max_batch(function, snapshot))

    @staticmethod
    def _max_batch(function: str, snapshot: Snapshot) -> int | None:
        limits = snapshot.limits.get(function)
        return None if limits is None else limits.max_batch

    @staticmethod
    def _workflow(app: str, function: str, snapshot: Snapshot) -> Workflow:
        workflow = snapshot.workflows.get(app)
        if workflow is None or function not in workflow.functions:
            return Workflow.single(function)
        return workflow

    def _split(self, workflow: Workflow, snapshot: Snapshot, capacity: Capacity) -> SloSplit:
        max_batch = {f: self._max_batch(f, snapshot) for f in workflow.functions}
        fastest = fastest_by_function(
            self.tables, snapshot.profiles, workflow.functions, capacity, max_batch
        )
        key = (
            workflow.name,
            workflow.functions,
            workflow.edges,
            workflow.slo_s,
            tuple(sorted(fastest.items())),
        )
        split = self._splits.get(key)
        if split is None:
            if len(self._splits) > 1024:
                self._splits.clear()
            split = split_slo(workflow, fastest, group_size=self.group_size)
            self._splits[key] = split
        return split


def _warm_configs(function: str, snapshot: Snapshot) -> frozenset[Config]:
    """Configurations of `function` with an idle warm sandbox on a node where it fits now."""
    warm = set()
    for node in snapshot.nodes:
        for (f, config), count in node.warm.items():
            if f == function and count > 0 and config not in warm and fits(node, config)[0]:
                warm.add(config)
    return frozenset(warm)
