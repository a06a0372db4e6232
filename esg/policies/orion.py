"""Orion's best-first sizing (Mahgoub et al., OSDI'22), pre-planned per request as ESG ran it.

From the code (reference/esg.md §6.3): every function starts at its smallest size; while the
predicted end-to-end P95 latency exceeds the target, try bumping each function by one step and
commit the single bump with the lowest resulting P95; stop when the target is met (or after
10,000 steps). Serial stages compose by convolution, parallel ones by the max. ESG compares
against this search only, applied to *all* functions when the *first* function of a request is
scheduled, with no later adjustment; a planned configuration that cannot be placed when its
stage is dispatched is a configuration miss.

Fitted here [inferred]: the lattice of one function is its profiled configurations, cheapest
per request first, keeping only those faster than every cheaper one (a step = the next such);
P95 of a stage = mean × `p95_factor` (the simulator's 5 % lognormal noise), composed along the
critical path (sum in series, max in parallel) instead of full distributions; the target is
the request's remaining time when its first function is queued. Jobs of one queue are bundled
when they share the planned configuration (up to its batch), with no wait. A miss falls back to
the configuration of the same batch that fits now and is closest in latency (not slower if
possible); when nothing fits the job waits for a completion.

Orion's other two "rights" (ESG compared against the sizing only):

* Pre-warming, DAG-aware [reconstructed]: Orion starts each stage's sandbox so that it is
  ready when the stage's inputs are, i.e. at (predecessors' expected finish − cold start)
  after the request arrives. When a request is planned, each later stage whose planned
  start (critical path of its predecessors' P95s) is at least the cold-start estimate
  (`FunctionLimits`) away is counted as expected, and its planned shape is pre-warmed
  until idle, pre-warming and (of the function, any shape) running sandboxes cover the
  expected batches of the requests in flight (the count falls when the stage is
  dispatched); placed as a dispatch is (warm node, then best fit), at most `max_prewarms`
  per call, at once rather than at start − cold (the sandbox idles a little longer,
  unbilled). A stage with less lead is not pre-warmed: a dispatch does not wait for a
  sandbox still starting here, so such a pre-warm only holds resources. In the grid's
  applications every stage starts within 0.1 s of its request, under the 0.25 s cold
  start, so this never fires there; pre-warming everything regardless started 18 sandboxes
  in a 10 s cell and lost 12 points of SLO hits on the tuning seed 0.
* Bundling [cannot exist behind the seam, beyond what is here]: Orion bundles the parallel
  invocations of *one* stage (a fan-out of the same function) into one larger sandbox. A
  stage here is one job per request, so its parallel invocations are the same queue's jobs,
  and bundling them is the batching above. Parallel branches are different functions, and a
  sandbox runs one function (a `Dispatch` names one), so they cannot be bundled together.
"""

from __future__ import annotations

import math
from typing import ClassVar

from esg.model import Config, Job, Workflow
from esg.policies.toolkit import (
    PrewarmLedger,
    closest_fitting,
    cold_start_s,
    pareto_steps,
    place,
    sandbox_shape,
)
from esg.policy import Action, Arrival, Dispatch, Event, Snapshot
from esg.pricing import DEFAULT_PRICING, Pricing


class OrionPolicy:
    name: ClassVar[str] = "orion"

    def __init__(
        self,
        *,
        pricing: Pricing = DEFAULT_PRICING,
        p95_factor: float = 1.08,
        max_steps: int = 10_000,
        prewarm: bool = True,
        max_prewarms: int = 4,
    ) -> None:
        self.pricing = pricing
        self.p95_factor = p95_factor
        self.max_steps = max_steps
        self.prewarm = prewarm
        self.max_prewarms = max_prewarms
        self._steps: dict[str, list[tuple[Config, float, float]]] = {}
        self._plans: dict[str, dict[str, Config]] = {}
        self._pending: dict[str, set[str]] = {}
        #: stages of planned requests not dispatched yet, by (function, planned config)
        self._expected: dict[tuple[str, Config], int] = {}
        #: per request, the stages counted in `_expected` and not dispatched yet
        self._warming: dict[str, set[str]] = {}
        self._ledger = PrewarmLedger()

    def lattice(self, function: str, snapshot: Snapshot) -> list[tuple[Config, float, float]]:
        if function not in self._steps:
            table = snapshot.profiles[function].latency_ms
            self._steps[function] = pareto_steps(table, self.pricing.cost_per_request)
        return self._steps[function]

    def e2e_s(self, workflow: Workflow, latency_ms: dict[str, float]) -> float:
        finish: dict[str, float] = {}
        for f in workflow.topological_order():
            start = max((finish[p] for p in workflow.predecessors(f)), default=0.0)
            finish[f] = start + latency_ms[f] * self.p95_factor / 1000
        return max(finish.values())

    def search(self, workflow: Workflow, budget_s: float, snapshot: Snapshot) -> dict[str, Config]:
        """Best-first: bump the one function whose next step lowers the P95 the most."""
        steps = {f: self.lattice(f, snapshot) for f in workflow.functions}
        index = dict.fromkeys(workflow.functions, 0)
        latency = {f: steps[f][0][1] for f in workflow.functions}
        current = self.e2e_s(workflow, latency)
        for _ in range(self.max_steps):
            if current <= budget_s:
                break
            best: tuple[float, str] | None = None
            for f in workflow.functions:
                if index[f] + 1 >= len(steps[f]):
                    continue
                trial = dict(latency)
                trial[f] = steps[f][index[f] + 1][1]
                candidate = (self.e2e_s(workflow, trial), f)
                if best is None or candidate < best:
                    best = candidate
            if best is None:
                break  # every function is at its fastest: run the fastest plan
            current, bumped = best
            index[bumped] += 1
            latency[bumped] = steps[bumped][index[bumped]][1]
        return {f: steps[f][index[f]][0] for f in workflow.functions}

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival) and event.job.request_id not in self._plans:
            job = event.job
            workflow = snapshot.workflows[job.app]
            plan = self.search(workflow, job.deadline_s - snapshot.now_s, snapshot)
            self._plans[job.request_id] = plan
            self._expect(job.request_id, workflow, plan, snapshot)
        actions: list[Action] = []
        for (app, function), jobs in sorted(snapshot.queues.items()):
            # Bundle jobs that share the planned configuration, oldest bundle first.
            groups: dict[Config, list[Job]] = {}
            for job in jobs:
                groups.setdefault(self._plans[job.request_id][function], []).append(job)
            for planned, members in groups.items():
                for start in range(0, len(members), planned.batch):
                    if not any(node.free_vcpu for node in snapshot.nodes):
                        # the cluster is full: wait for a completion
                        return actions + self._prewarms(snapshot)
                    chunk = members[start : start + planned.batch]
                    ids = tuple(j.id for j in chunk)
                    dispatch = self._dispatch(app, function, ids, planned, snapshot)
                    if dispatch is None:
                        break
                    actions.append(dispatch)
                    snapshot = snapshot.reserve(dispatch)
                    for job in chunk:
                        self._forget(job.request_id, function, snapshot.workflows[app])
        return actions + self._prewarms(snapshot)

    def _expect(self, request_id: str, workflow: Workflow, plan: dict[str, Config],
                snapshot: Snapshot) -> None:
        """Count the stages a pre-warm started now could have warm when they start: those
        whose planned start (critical path of their predecessors' P95s) is at least the
        cold-start estimate away."""
        start: dict[str, float] = {}
        expected: set[str] = set()
        for f in workflow.topological_order():
            start[f] = max((start[p] + snapshot.profiles[p].latency_ms[plan[p]]
                            * self.p95_factor / 1000 for p in workflow.predecessors(f)),
                           default=0.0)
            if workflow.predecessors(f) and start[f] >= cold_start_s(snapshot, f, plan[f]):
                self._expected[(f, plan[f])] = self._expected.get((f, plan[f]), 0) + 1
                expected.add(f)
        if expected:
            self._warming[request_id] = expected

    def _prewarms(self, snapshot: Snapshot) -> list[Action]:
        """Pre-warm the planned shapes of the stages still to come (module docstring)."""
        if not self.prewarm:
            return []
        actions: list[Action] = []
        for (function, planned), count in sorted(self._expected.items()):
            if count <= 0:
                continue
            shape = sandbox_shape(snapshot.profiles[function].latency_ms, planned)
            made, snapshot = self._ledger.top_up(snapshot, function, shape,
                                                 math.ceil(count / planned.batch),
                                                 self.max_prewarms - len(actions))
            actions += made
        return actions

    def _dispatch(self, app: str, function: str, ids: tuple[str, ...], planned: Config,
                  snapshot: Snapshot) -> Dispatch | None:
        """The planned configuration where it fits, else the closest that fits (a miss)."""
        where = place(snapshot, function, planned)
        if where is not None:
            config, node, gpu = planned, where[0], where[1]
        else:
            fallback = closest_fitting(snapshot, function, planned, self.pricing.cost_per_request)
            if fallback is None:
                return None
            config, node, gpu = fallback
        return Dispatch(app, function, ids, config, node, gpu=gpu, plan={function: planned})

    def _forget(self, request_id: str, function: str, workflow: Workflow) -> None:
        """Drop a request's plan once its exit functions have all been dispatched."""
        if request_id not in self._plans:
            return
        pending = self._pending.setdefault(request_id, set(workflow.functions))
        pending.discard(function)
        key = (function, self._plans[request_id][function])
        if function in self._warming.get(request_id, ()):
            self._warming[request_id].discard(function)
            self._expected[key] -= 1
            if not self._expected[key]:
                del self._expected[key]
        if not pending:
            del self._plans[request_id]
            del self._pending[request_id]
            self._warming.pop(request_id, None)
