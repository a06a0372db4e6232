"""ESG as a policy behind the seam: plan every queued stage, dispatch the first plan that fits.

On every event (arrival, completion, timer) each non-empty AFW queue is looked at, the one with
the earliest deadline first:

1. Its function's group (`esg.slo`) is planned by ESG_1Q (`esg.search`) with the time actually
   left: budget = (earliest deadline among the jobs a batch would take − now) − what later
   groups are promised. Only functions with a profile join the plan.
2. Partial batch: when the best plan wants more jobs than are queued, the policy waits
   (WakeUp) as long as the cheapest plan runnable with the jobs already queued still meets the
   budget, and dispatches that plan when the wait is over or more jobs came. A plan runnable
   now may use a batch configuration larger than the queue: its batch latency is kept (a safe
   bound) and its cost shared by the jobs actually there. No waiting when the budget is lost.
3. ESG_Dispatch (`esg.dispatch`) takes the plans in priority order and places the first that
   fits a node; nothing fits: the jobs stay queued and the next completion retries.
4. Infeasible (no plan meets the budget): the fastest plans are run, not dropped. A late
   answer is still an answer for the caller, and dropping is admission control's job.

Functions without a profile (a function the daemon deployed a moment ago) are run FCFS-style
at their `FunctionLimits` (max_batch, vcpu, vgpu), waiting at most `max_queue_delay_s` for a
batch to fill, until the profiler provides a table.

Settings (keyword only, all with defaults): `k` plans per search (8), `group_size` (3),
`pricing` (a `Pricing`, a mapping or YAML text; default `configs/pricing.yaml`'s values),
`wait_for_batch` (True), `min_wait_ms` (0.5: shorter waits dispatch at once),
`no_slo_wait_s` (0.0: how long to wait for a batch when a job has no deadline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from esg.dispatch import candidate_nodes, fits, place
from esg.model import Config, Job, Profile, Workflow
from esg.policy import Action, Dispatch, Event, FunctionLimits, Snapshot, WakeUp
from esg.pricing import Pricing, parse_pricing
from esg.profiles import Capacity, priced_options
from esg.search import (
    CompiledGroup,
    Option,
    PlanCache,
    PreparedOptions,
    SearchResult,
    compile_group,
    prepare_options,
)
from esg.slo import SloSplit, split_slo

_Outcome = Dispatch | float | None  # a dispatch, a time to look again, or keep waiting


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
        default_limits: FunctionLimits | None = None,
    ) -> None:
        if k < 1 or group_size < 1:
            raise ValueError(f"k and group_size must be >= 1, got k={k}, group_size={group_size}")
        self.k = k
        self.group_size = group_size
        self.pricing = pricing if isinstance(pricing, Pricing) else parse_pricing(pricing)
        self.wait_for_batch = wait_for_batch
        self.min_wait_ms = min_wait_ms
        self.no_slo_wait_s = no_slo_wait_s
        self.default_limits = default_limits or FunctionLimits()
        self.cache = PlanCache()
        self._profiles: dict[str, tuple[Profile, int]] = {}
        self._generation = 0
        self._options: dict[tuple[Any, ...], tuple[Option, ...]] = {}
        self._prepared_cache: dict[tuple[Any, ...], PreparedOptions] = {}
        self._splits: dict[tuple[Any, ...], SloSplit] = {}

    # ------------------------------------------------------------------ the seam

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        del event  # every event is a reason to look at every queue again
        actions: list[Action] = []
        wake_at: float | None = None
        capacity = Capacity.of(snapshot.nodes)
        queues = [(k, jobs) for k, jobs in snapshot.queues.items() if jobs]
        queues.sort(key=lambda kv: (min(j.deadline_s for j in kv[1]), kv[0]))
        for key, _ in queues:
            while jobs := snapshot.queues.get(key, ()):
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
        self,
        key: tuple[str, str],
        jobs: tuple[Job, ...],
        snapshot: Snapshot,
        capacity: Capacity,
    ) -> _Outcome:
        app, function = key
        limits = snapshot.limits.get(function)
        cap = None if limits is None else limits.max_instances
        if cap is not None and snapshot.running.get(function, 0) >= cap:
            return None  # a completion of this function will call again
        options = self._priced(function, snapshot, capacity)
        if not options:
            return self._unprofiled(app, function, jobs, snapshot, limits or self.default_limits)
        workflow = self._workflow(app, function, snapshot)
        split = self._split(workflow, snapshot, capacity)
        members, edges = split.remaining(function)
        members = tuple(f for f in members if f == function or self._priced(f, snapshot, capacity))
        edges = tuple((a, b) for a, b in edges if a in members and b in members)
        widest = max(o.config.batch for o in options)
        urgent = min(j.deadline_s for j in jobs[:widest])
        reserved_ms = split.group(function).reserved_after_ms
        budget_ms = (urgent - snapshot.now_s) * 1000.0 - reserved_ms
        result = self._search(members, edges, snapshot, capacity, budget_ms, None)
        plans = result.plans
        if result.feasible and plans[0].configs[function].batch > len(jobs):
            now = self._search(members, edges, snapshot, capacity, budget_ms, len(jobs))
            if now.feasible:
                wait_until = self._wait_until(jobs, snapshot, budget_ms - now.plans[0].latency_ms)
                if wait_until is not None:
                    return wait_until
                plans = now.plans
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
        members: Sequence[str],
        edges: tuple[tuple[str, str], ...],
        snapshot: Snapshot,
        capacity: Capacity,
        budget_ms: float,
        head_cap: int | None,
    ) -> SearchResult:
        head = members[0]
        key = (
            tuple(
                (f, self._version(snapshot.profiles[f]), self._max_batch(f, snapshot))
                for f in members
            ),
            edges,
            capacity,
            self.pricing,
            self.k,
            head_cap,
        )

        def build() -> CompiledGroup:
            tables = {
                f: self._prepared(f, snapshot, capacity, head_cap if f == head else None)
                for f in members
            }
            return compile_group(members, edges, tables, self.k)

        return self.cache.search(key, build, budget_ms)

    def _prepared(
        self, function: str, snapshot: Snapshot, capacity: Capacity, head_cap: int | None
    ) -> PreparedOptions:
        """The function's options sorted and K-filtered, once per profile version (and cap)."""
        profile = snapshot.profiles[function]
        key = (
            function,
            self._version(profile),
            capacity,
            self._max_batch(function, snapshot),
            head_cap,
        )
        prepared = self._prepared_cache.get(key)
        if prepared is None:
            if len(self._prepared_cache) > 4096:
                self._prepared_cache.clear()
            options = self._priced(function, snapshot, capacity)
            if head_cap is not None:
                options = tuple(_partial(o, head_cap) for o in options)
            prepared = prepare_options(options, self.k, function)
            self._prepared_cache[key] = prepared
        return prepared

    def _priced(self, function: str, snapshot: Snapshot, capacity: Capacity) -> tuple[Option, ...]:
        """The function's runnable options (empty without a profile)."""
        profile = snapshot.profiles.get(function)
        if profile is None:
            return ()
        max_batch = self._max_batch(function, snapshot)
        key = (function, self._version(profile), capacity, max_batch)
        options = self._options.get(key)
        if options is None:
            if len(self._options) > 4096:
                self._options.clear()
            options = tuple(priced_options(profile, self.pricing, capacity, max_batch))
            self._options[key] = options
        return options

    @staticmethod
    def _max_batch(function: str, snapshot: Snapshot) -> int | None:
        limits = snapshot.limits.get(function)
        return None if limits is None else limits.max_batch

    def _version(self, profile: Profile) -> int:
        """A number that changes whenever the function's table does (even if `version` did not)."""
        seen = self._profiles.get(profile.function)
        if seen is not None and seen[0] is profile:
            return seen[1]
        same = (
            seen is not None
            and seen[0].version == profile.version
            and seen[0].latency_ms == profile.latency_ms
        )
        if not same:
            self._generation += 1
        generation = seen[1] if same and seen is not None else self._generation
        self._profiles[profile.function] = (profile, generation)
        return generation

    @staticmethod
    def _workflow(app: str, function: str, snapshot: Snapshot) -> Workflow:
        workflow = snapshot.workflows.get(app)
        if workflow is None or function not in workflow.functions:
            return Workflow.single(function)
        return workflow

    def _split(self, workflow: Workflow, snapshot: Snapshot, capacity: Capacity) -> SloSplit:
        fastest: dict[str, float] = {}
        for f in workflow.functions:
            options = self._priced(f, snapshot, capacity)
            if options:
                fastest[f] = min(o.latency_ms for o in options)
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


def _partial(option: Option, jobs: int) -> Option:
    """`option` run with only `jobs` jobs: a batch that large or larger costs the same per batch
    (its latency taken as the full batch's, a safe upper bound), shared by fewer requests."""
    if option.config.batch <= jobs:
        return option
    return Option(option.config, option.latency_ms, option.cost * option.config.batch / jobs)
