"""The discrete-event simulator: drives one policy over one scenario on a simulated cluster.

Events (a heap ordered by time, then insertion): a request arrives, a batch completes, a policy
timer fires. For each event the engine builds a read-only `Snapshot`, calls the policy with the
injected `timer` around the call (its wall time is the scheduling overhead), and applies the
actions as `esg.policy` specifies; a bad dispatch raises `PolicyError`.

A dispatched batch takes its vCPUs and slice units at once and runs
`setup + exec` seconds, where

* setup = max(cold start (the function's `FunctionLimits.cold_start_ms` where its limits
  carry one, else the cluster's) if no idle warm sandbox of the function with that (vCPUs,
  slice) shape on the node,
  transfer of every job's inputs from the nodes its predecessors ran on): data streams in while
  the sandbox starts; with `charge_overhead` the policy call's wall time is added too (a
  cold start beyond the function's `max_instances` sandboxes on the node stops its idle
  sandbox of another shape, as the daemon's pool does);
* the function's `FunctionLimits.overhead_ms` (what the daemon measured a warm batch to take
  beyond its execution) is added after exec: it occupies the vCPUs but is not billed;
* a call also takes its application's `Scenario.outside_ms` (the daemon's hops between
  stages and the rendering of its answer) and `Scenario.client_ms` (what the client waits
  beyond the daemon's account), added when its last exit finishes;
* exec = the profile's mean latency (of the smallest profiled batch holding the jobs, at the
  same vCPUs and slice, for a partial batch) made wrong by `EngineSettings.execution`
  (`esg.sim.execution`): × the function's systematic factor, × a lognormal noise factor drawn
  from a seeded RNG (one draw per batch), × the interference of the batches already running
  on the node (the scenario's `true_profiles` instead of the profile where a driver gave
  them). Policies see only the profile; `Completion.exec_s` reports what ran. With
  `EngineSettings.refine_profiles` the profile they see is refined by every warm batch, as the
  daemon's is (`esg.sim.refining`).

A `Prewarm` that fits the node (free vCPUs and slice units, fewer live sandboxes of the
function there than its `max_instances`) starts a sandbox: it holds the shape's resources for
the cold start (none during an instant warm-up), is then parked warm for `keep_alive_s`, and
the policy gets a `Timer` (the resources it held are free again). One that does not fit is
ignored and counted (`RunRecord.prewarms_ignored`); a sandbox still starting is not yet warm,
so a dispatch before it is ready starts its own.

Cost of a batch = (P_cpu·vcpu + P_gpu·vgpu) · exec (billed execution time, `esg.pricing`),
shared equally by its jobs. When it completes, the sandbox is parked warm for
`keep_alive_s`, the policy gets a `Completion`, and each request's successors whose
predecessors are all done are enqueued (one `Arrival` each). A request finishes when all its
exit functions have; a `Drop` fails it. Everything but the overhead samples is a function of the
scenario, the policy and the seed.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from esg.errors import PolicyError
from esg.model import MIG_SIZES, Config, Job, Profile
from esg.policy import (
    Action,
    Arrival,
    Completion,
    Dispatch,
    Drop,
    Event,
    Policy,
    Prewarm,
    Snapshot,
    Timer,
    WakeUp,
)
from esg.pricing import DEFAULT_PRICING, Pricing
from esg.sim.cluster import ClusterSpec, NodeState
from esg.sim.execution import ExecutionModel
from esg.sim.metrics import BatchRecord, RequestRecord, RunRecord
from esg.sim.refining import LiveProfiles
from esg.sim.workloads import Scenario

_ARRIVE, _DONE, _TIMER, _WARMED = 0, 1, 2, 3


@dataclass(frozen=True)
class EngineSettings:
    #: How executed latencies depart from the profile (default: exact but for 5 % noise).
    execution: ExecutionModel = field(default_factory=ExecutionModel)
    seed: int = 0
    pricing: Pricing = DEFAULT_PRICING
    #: Delay each dispatch by the wall time of the policy call that made it, as measured by the
    #: injected timer (with a wall clock, results are then no longer a function of the seed).
    charge_overhead: bool = False
    #: Stop this long after the last arrival; what is unfinished then counts as missed.
    drain_s: float = 30.0
    #: Cold starts during the warm-up (before the scenario's `measure_from_s`) take no time:
    #: each policy builds the sandbox pool its own choices need, as if it had been serving
    #: this load for hours; afterwards a cold start costs what the cluster says.
    instant_warmup: bool = True
    #: Refine the profiles the policies see with every warm batch, by the daemon's rule
    #: (`esg.sim.refining`), as the daemon does; off, the policies plan with the scenario's.
    refine_profiles: bool = False


@dataclass
class _Request:
    id: str
    app: str
    start_s: float
    deadline_s: float
    measured: bool
    waiting_on: dict[str, int]
    output_node: dict[str, str] = field(default_factory=dict)
    plan: dict[str, Config] = field(default_factory=dict)
    exits_left: int = 0
    cost: float = 0.0
    failed: str | None = None
    finish_s: float | None = None


@dataclass
class _Batch:
    dispatch: Dispatch
    start_s: float
    exec_s: float
    cold: bool
    jobs: tuple[Job, ...]


class Simulation:
    """One run. Call `run()` once; it returns the `RunRecord` the metrics are computed from."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        cluster: ClusterSpec | None = None,
        *,
        timer: Callable[[], float],
        settings: EngineSettings | None = None,
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.cluster = cluster or ClusterSpec()
        self.settings = settings or EngineSettings()
        self._timer = timer
        self._rng = random.Random(f"{self.settings.seed}:noise")
        self._factors = self.settings.execution.factors(scenario.profiles, self.settings.seed)
        self._truth = scenario.true_profiles or scenario.profiles
        self._true_batches = _batches_by_shape(self._truth)
        self._live = (LiveProfiles(scenario.profiles, scenario.profile_points)
                      if self.settings.refine_profiles else None)
        batches = {
            name: tuple(sorted({c.batch for c in profile.latency_ms}))
            for name, profile in scenario.profiles.items()
        }
        self._nodes = {
            n: NodeState.fresh(n, self.cluster, batches) for n in self.cluster.node_names()
        }
        self._node_order = tuple(self._nodes)
        self._queues: dict[tuple[str, str], dict[str, Job]] = {}
        self._queue_views: dict[tuple[str, str], tuple[Job, ...]] = {}
        self._jobs: dict[str, _Request] = {}
        self._running: dict[str, int] = {}
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._timers: set[float] = set()
        self._next_expiry = math.inf
        self._now = 0.0
        self._record = RunRecord(
            policy=policy.name,
            scenario=scenario.name,
            total_vcpu=self.cluster.total_vcpu,
            total_units=self.cluster.total_units,
            measure_from_s=scenario.measure_from_s,
        )

    # ------------------------------------------------------------ the loop

    def run(self) -> RunRecord:
        for i, (t, app) in enumerate(self.scenario.arrivals):
            self._push(t, _ARRIVE, (f"r{i}", app))
        last = self.scenario.arrivals[-1][0] if self.scenario.arrivals else 0.0
        horizon = last + self.settings.drain_s
        while self._heap and self._heap[0][0] <= horizon:
            t, _, kind, data = heapq.heappop(self._heap)
            self._now = t
            if kind == _ARRIVE:
                assert isinstance(data, tuple)
                self._arrive(str(data[0]), str(data[1]))
            elif kind == _DONE:
                assert isinstance(data, _Batch)
                self._complete(data)
            elif kind == _WARMED:
                assert isinstance(data, Prewarm)
                self._warmed(data)
            else:
                self._timers.discard(t)
                self._call(Timer())
        self._record.end_s = max(self._now, last)
        return self._record

    def _push(self, t: float, kind: int, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, data))

    # ------------------------------------------------------------ events

    def _arrive(self, rid: str, app: str) -> None:
        workflow = self.scenario.workflows[app]
        request = _Request(
            id=rid,
            app=app,
            start_s=self._now,
            deadline_s=self._now + workflow.slo_s,
            measured=self._now >= self.scenario.measure_from_s,
            waiting_on={f: len(workflow.predecessors(f)) for f in workflow.functions},
            exits_left=len(workflow.exits()),
        )
        self._record.requests[rid] = RequestRecord(app, self._now, workflow.slo_s, request.measured)
        for function in workflow.entries():
            self._enqueue(request, function, None, 0.0)

    def _enqueue(self, request: _Request, function: str, node: str | None, nbytes: float) -> None:
        job = Job(
            id=f"{request.id}/{function}",
            request_id=request.id,
            app=request.app,
            function=function,
            request_start_s=request.start_s,
            enqueued_s=self._now,
            deadline_s=request.deadline_s,
            input_node=node,
            input_bytes=int(nbytes),
        )
        key = (request.app, function)
        self._queues.setdefault(key, {})[job.id] = job
        self._queue_views.pop(key, None)
        self._jobs[job.id] = request
        self._call(Arrival(job))

    def _complete(self, batch: _Batch) -> None:
        d = batch.dispatch
        node = self._nodes[d.node]
        node.hold(d.config, d.gpu, +1)
        expires = self._now + self.cluster.keep_alive_s
        node.park(d.function, d.config, expires)
        self._next_expiry = min(self._next_expiry, expires)
        self._running[d.function] -= 1
        self._record.batches.append(
            BatchRecord(
                d.app,
                d.function,
                d.config,
                d.node,
                batch.start_s,
                self._now,
                batch.exec_s,
                batch.cold,
                len(batch.jobs),
                tuple(self._now - j.enqueued_s for j in batch.jobs),
            )
        )
        if self._live is not None and not batch.cold:
            # as the daemon's profile store: the point of the batch's own size, not the first
            # batch of a new sandbox
            self._live.observe(d.function, Config(len(batch.jobs), d.config.vcpu, d.config.vgpu),
                               batch.exec_s * 1000)
        self._call(Completion(d, batch.exec_s, cold_start=batch.cold))
        workflow = self.scenario.workflows[d.app]
        for job in batch.jobs:
            request = self._jobs.pop(job.id)
            request.output_node[d.function] = d.node
            if request.failed is not None:
                continue
            successors = workflow.successors(d.function)
            if not successors:
                request.exits_left -= 1
                if request.exits_left == 0:
                    # The time outside the stages comes at the end here; on the daemon part of
                    # it lies between stages, which adds the same to a call's latency.
                    after_ms = (self.scenario.outside_ms.get(request.app, 0.0)
                                + self.scenario.client_ms.get(request.app, 0.0))
                    finish_s = self._now + after_ms / 1000
                    request.finish_s = finish_s
                    self._record.requests[request.id].finish_s = finish_s
            for succ in successors:
                request.waiting_on[succ] -= 1
                if request.waiting_on[succ] == 0:
                    preds = workflow.predecessors(succ)
                    nbytes = sum(self.scenario.output_bytes[p] for p in preds)
                    self._enqueue(request, succ, d.node, nbytes)

    # ------------------------------------------------------------ the policy

    def _snapshot(self) -> Snapshot:
        if self._now >= self._next_expiry:
            for state in self._nodes.values():
                state.expire(self._now)
            self._next_expiry = min(
                (heap[0] for s in self._nodes.values() for heap in s.idle.values() if heap),
                default=math.inf,
            )
        queues = {}
        for key, jobs in self._queues.items():
            view = self._queue_views.get(key)
            if view is None:
                view = self._queue_views[key] = tuple(jobs.values())
            queues[key] = view
        return Snapshot(
            now_s=self._now,
            nodes=tuple(self._nodes[n].view() for n in self._node_order),
            queues=queues,
            workflows=self.scenario.workflows,
            profiles=self._seen(),
            limits=self.scenario.limits,
            running=dict(self._running),
            outside_ms=self.scenario.outside_ms,
            profiles_refined=self._live is not None,
        )

    def _seen(self) -> Mapping[str, Profile]:
        """The profiles the policies plan with: the scenario's, or their refined versions."""
        return self.scenario.profiles if self._live is None else self._live.profiles

    def _call(self, event: Event) -> None:
        snapshot = self._snapshot()
        before = self._timer()
        actions = self.policy.on_event(event, snapshot)
        spent_s = max(0.0, self._timer() - before)
        self._record.overhead_ms.append(spent_s * 1000)
        delay = spent_s if self.settings.charge_overhead else 0.0
        for action in actions:
            self._apply(action, delay)

    def _apply(self, action: Action, delay_s: float) -> None:
        if isinstance(action, Dispatch):
            self._dispatch(action, delay_s)
        elif isinstance(action, WakeUp):
            at = max(action.at_s, self._now)
            if at not in self._timers:
                self._timers.add(at)
                self._push(at, _TIMER, None)
        elif isinstance(action, Prewarm):
            self._prewarm(action)
        elif isinstance(action, Drop):
            queue = self._queues.get((action.app, action.function), {})
            for job_id in action.job_ids:
                if queue.pop(job_id, None) is None:
                    raise PolicyError(f"{self.policy.name} dropped {job_id}, which is not queued")
                request = self._jobs.pop(job_id)
                request.failed = request.failed or action.reason
                self._record.requests[request.id].failed = request.failed
            self._queue_views.pop((action.app, action.function), None)
        else:  # pragma: no cover - the Action union is closed
            raise PolicyError(f"{self.policy.name} returned {action!r}")

    def _prewarm(self, p: Prewarm) -> None:
        node = self._nodes.get(p.node)
        if node is None:
            raise PolicyError(f"{self.policy.name} pre-warmed on unknown node {p.node!r}")
        if p.config not in self._seen()[p.function].latency_ms:
            raise PolicyError(f"{self.policy.name}: {p.config} is not profiled for {p.function}")
        limits = self.scenario.limits.get(p.function)
        cap = None if limits is None else limits.max_instances
        if not node.fits(p.config, p.gpu) or (
            cap is not None and node.sandboxes(p.function, self._now) >= cap
        ):
            self._record.prewarms_ignored += 1
            return
        self._record.prewarms += 1
        node.start(p.function, p.config, p.gpu)
        warming = self.settings.instant_warmup and self._now < self.scenario.measure_from_s
        ready = self._now + (0.0 if warming else self._cold_start_s(p.function, p.config))
        self._push(ready, _WARMED, p)

    def _warmed(self, p: Prewarm) -> None:
        node = self._nodes[p.node]
        node.hold(p.config, p.gpu, +1)
        expires = self._now + self.cluster.keep_alive_s
        node.park(p.function, p.config, expires)
        self._next_expiry = min(self._next_expiry, expires)
        self._call(Timer())

    def _cold_start_s(self, function: str, config: Config) -> float:
        """A sandbox's start: the estimate the function's limits carry (a daemon's measured cold
        start, which the policies see too), else the cluster's. On the daemon a CNN starts in
        about 300 ms and a pre-processing graph in 40: one figure for both misled the
        simulated planners about which shapes a cold start leaves in time."""
        limits = self.scenario.limits.get(function)
        if limits is None or limits.cold_start_ms is None:
            return self.cluster.cold_start_s(config)
        gpu_s = (self.cluster.cold_start_gpu_extra_s if limits.cold_start_gpu_ms is None
                 else limits.cold_start_gpu_ms / 1000.0)
        return limits.cold_start_ms / 1000.0 + (gpu_s if config.vgpu else 0.0)

    def _dispatch(self, d: Dispatch, delay_s: float) -> None:
        node = self._nodes.get(d.node)
        if node is None:
            raise PolicyError(f"{self.policy.name} dispatched to unknown node {d.node!r}")
        if d.config.vgpu and d.config.vgpu not in MIG_SIZES:
            raise PolicyError(f"{self.policy.name}: {d.config.vgpu} units is not a MIG size")
        if not node.fits(d.config, d.gpu):
            raise PolicyError(f"{self.policy.name} over-commits {d.node} with {d.config}")
        if d.config not in self._seen()[d.function].latency_ms:
            raise PolicyError(f"{self.policy.name}: {d.config} is not profiled for {d.function}")
        key = (d.app, d.function)
        queue = self._queues.get(key, {})
        jobs = []
        for job_id in d.job_ids:
            job = queue.pop(job_id, None)
            if job is None:
                raise PolicyError(f"{self.policy.name} dispatched {job_id}, which is not queued")
            jobs.append(job)
        self._queue_views.pop(key, None)
        node.hold(d.config, d.gpu, -1)
        self._running[d.function] = self._running.get(d.function, 0) + 1
        limits = self.scenario.limits.get(d.function)
        cap = None if limits is None else limits.max_instances
        overhead_s = 0.0 if limits is None else limits.overhead_ms / 1000.0
        cold = not node.take_warm(d.function, d.config, self._now, cap)
        warming = self.settings.instant_warmup and self._now < self.scenario.measure_from_s
        setup_s = max(
            self._cold_start_s(d.function, d.config) if cold and not warming else 0.0,
            max(self._transfer_s(job, d.node) for job in jobs),
        )
        exec_s = self._executed_s(d, node, self._true_ms(d.function, d.config, len(jobs)))
        # The resource-time of the whole batch, shared by the jobs in it.
        batch_cost = self.settings.pricing.cost_per_request(
            d.config, exec_s * 1000 * d.config.batch
        )
        for job in jobs:
            request = self._jobs[job.id]
            request.cost += batch_cost / len(jobs)
            planned = request.plan.get(d.function, d.plan.get(d.function))
            self._record.stage(request.id, batch_cost / len(jobs), planned, d.config)
            for function, config in d.plan.items():
                if function != d.function:
                    request.plan.setdefault(function, config)
        start = self._now + delay_s
        batch = _Batch(d, start, exec_s, cold, tuple(jobs))
        self._push(start + setup_s + exec_s + overhead_s, _DONE, batch)

    def _true_ms(self, function: str, config: Config, jobs: int) -> float:
        """What `jobs` items take on `config`'s vCPUs and slice: the smallest batch of that
        shape in the true table that holds them (dynamic batch dimension: a partial batch runs
        as the next profiled size; a batch size that only refinement added to the policies'
        view runs as the one above it), or the largest, scaled."""
        batches = self._true_batches.get((function, config.vcpu, config.vgpu))
        if not batches:
            raise PolicyError(f"{function}: {config} has no profiled shape to run as")
        table = self._truth[function].latency_ms
        i = bisect.bisect_left(batches, jobs)
        if i < len(batches):
            return table[Config(batches[i], config.vcpu, config.vgpu)]
        return table[Config(batches[-1], config.vcpu, config.vgpu)] * jobs / batches[-1]

    def _executed_s(self, d: Dispatch, node: NodeState, profile_ms: float) -> float:
        """What the batch really runs (`esg.sim.execution`); `node` already holds its share."""
        model = self.settings.execution
        noise = model.noise(self._rng)
        others_units = 0
        if d.config.vgpu and d.gpu is not None:
            others_units = node.units_per_gpu - node.gpu_free[d.gpu] - d.config.vgpu
        slowdown = model.interference(
            d.config, node.total_vcpu - node.free_vcpu - d.config.vcpu, node.total_vcpu,
            others_units, node.units_per_gpu,
        )
        return profile_ms / 1000 * self._factors.get(d.function, 1.0) * noise * slowdown

    def _transfer_s(self, job: Job, node: str) -> float:
        """Time to bring every predecessor output of `job` that lives elsewhere to `node`."""
        request = self._jobs[job.id]
        workflow = self.scenario.workflows[job.app]
        total = 0.0
        for pred in workflow.predecessors(job.function):
            where = request.output_node.get(pred)
            if where is not None and where != node:
                total += self.cluster.transfer_s(self.scenario.output_bytes[pred])
        return total


def _batches_by_shape(profiles: Mapping[str, Profile]) -> dict[tuple[str, int, int], list[int]]:
    """Per (function, vCPUs, slice): the profiled batch sizes, ascending."""
    out: dict[tuple[str, int, int], list[int]] = {}
    for name, profile in profiles.items():
        for config in profile.latency_ms:
            out.setdefault((name, config.vcpu, config.vgpu), []).append(config.batch)
    return {key: sorted(batches) for key, batches in out.items()}
