"""The controller: AFW queues, the policy seam driven with the real clock, dispatches.

One node, in process. Each invocation becomes an `esg.model.Job` in the queue of its
(application, function) — a function invoked alone is its own application. Every event
(arrival, completion, timer) builds a `Snapshot` of this node (vCPUs free, warm sandboxes,
batches in flight) and asks the policy what to do. The controller enforces the seam's
contract: a dispatch of a job that is not queued, or one that over-commits the node's vCPUs,
is a policy bug and raises `PolicyError`; wake-ups are delivered at (or just after) their time,
equal times coalesce; dropped jobs fail with 503 and the policy's reason. A `Prewarm` is
ignored (logged at debug): the seam makes it a hint, and this node's pool already keeps each
function's `min_instances` warm and every used sandbox for its keep-alive; starting one here
would need the pool and the version, which the controller does not hold.

In a cluster the leader's controller schedules the whole cluster (with a `Remote`): the
snapshot adds the other nodes as they reported themselves, each with the lesser of its
reported free vCPUs and GPU units and what this leader's batches there leave; calls that
entered at other nodes are queued by their metadata alone (`Invocation.entry`); and a batch
placed on another node, or holding calls of other entry nodes, runs through
`Remote.execute` (`faasd.cluster.dispatcher`). A batch of this node's own calls on this node
runs as on a lone node. `evict_queued` gives up what is queued when this node stops leading:
the entry nodes place those calls with the new leader.

GPUs (with a `GpuSource`): the snapshot's node carries the GPUs' free and total slice units; a
function with `vgpu > 0` runs at that share where some GPU could give it (in a cluster, on
any node), on the CPU where no node has GPU units at all (as before GPUs were known), and is
refused with GpuUnavailable where the node has GPUs but no slice of that size (MIG: no such
instance). A dispatch naming a GPU the node does not have is a policy bug. The slice itself is
taken when the sandbox starts (`faasd.gpu.slices.SliceTable` never over-commits), since a warm
sandbox keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from esg.errors import PolicyError
from esg.model import Config, Job, Profile, Workflow
from esg.policy import (
    Action,
    Arrival,
    Completion,
    Dispatch,
    Drop,
    Event,
    FunctionLimits,
    GpuView,
    NodeView,
    Policy,
    Prewarm,
    Snapshot,
    Timer,
    WakeUp,
)
from faasd.clock import Clock
from faasd.errors import FaasdError, GpuUnavailable, Overloaded, Unavailable
from faasd.functions.spec import FunctionVersion
from faasd.gateway import CallResult, Invocation

log = logging.getLogger("faasd.controller")

NODE = "local"
#: Weight of the newest sample in the smoothed per-batch overhead and time outside stages
#: (EWMAs).
OVERHEAD_SMOOTHING = 0.1


@dataclass(frozen=True)
class BatchOutcome:
    """What the invoker reports for one dispatch: one result or error per invocation."""

    results: list[CallResult | FaasdError]
    exec_s: float
    cold_start: bool
    ok: bool


class ProfileSource(Protocol):
    """Where the policy's profiles and cold-start estimates come from (the profile store)."""

    def profiles(self) -> Mapping[str, Profile]:
        """The current profile of every function that has one, keyed by function name."""
        ...

    def cold_starts_ms(self) -> Mapping[str, float]:
        """The measured cold start of each function's current version (ms), where measured."""
        ...


class NoProfiles:
    """No profiles yet: planning policies run every function FCFS-style at its limits."""

    def profiles(self) -> Mapping[str, Profile]:
        return MappingProxyType({})

    def cold_starts_ms(self) -> Mapping[str, float]:
        return MappingProxyType({})


class GpuSource(Protocol):
    """The node's GPU slices (faasd.gpu.service.GpuService)."""

    def views(self) -> tuple[GpuView, ...]:
        """Each GPU's free and total slice units, as the policy sees them."""
        ...

    def sizes(self) -> frozenset[int]:
        """The slice sizes some healthy GPU of the node could give (empty: no GPU units)."""
        ...


class Executor(Protocol):
    """What the controller needs from the invoker."""

    async def execute(
        self, config: Config, invocations: list[Invocation], now_s: float
    ) -> BatchOutcome: ...


class Remote(Protocol):
    """The cluster's other nodes while this node leads (`faasd.cluster.dispatcher`)."""

    def views(self) -> tuple[NodeView, ...]:
        """The other nodes as they reported themselves (the controller also subtracts the
        batches it placed there); empty while this node does not lead."""
        ...

    async def execute(self, dispatch: Dispatch, invocations: list[Invocation]) -> BatchOutcome:
        """Run a batch placed elsewhere or holding other entry nodes' calls."""
        ...

    def drop(self, entry: str, app: str, function: str, ids: Sequence[str],
             reason: str) -> None:
        """Tell the entry node `entry` the policy dropped these calls of its."""
        ...


@dataclass
class _Pending:
    invocation: Invocation
    future: asyncio.Future[CallResult]
    job: Job
    running: bool = False


@dataclass
class _Running:
    dispatch: Dispatch
    task: asyncio.Task[None] | None = None
    versions: set[tuple[str, int]] = field(default_factory=set)


def limits_of(
    version: FunctionVersion, cold_start_ms: float | None = None, vgpu: int = 0
) -> FunctionLimits:
    """The FCFS knobs of a version: its batching, vCPUs, GPU units (`vgpu`: what the node can
    give it, see `Controller`) and instance cap, and its measured cold start when there is
    one (planning policies add it to a cold plan)."""
    settings = version.settings
    return FunctionLimits(
        max_batch=max(1, settings.max_batch_size) if version.batched else 1,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000,
        vcpu=max(1, settings.vcpu),
        vgpu=vgpu,
        max_instances=settings.max_instances,
        cold_start_ms=cold_start_ms,
    )


class Controller:
    def __init__(
        self,
        *,
        policy: Policy,
        executor: Executor,
        clock: Clock,
        vcpu_capacity: int,
        warm: Callable[[], Mapping[tuple[str, Config], int]] = dict,
        max_queue: int = 1024,
        profiles: ProfileSource | None = None,
        gpus: GpuSource | None = None,
        node_name: str = NODE,
    ) -> None:
        self._policy = policy
        self.node_name = node_name
        self._remote: Remote | None = None
        #: the other nodes in the last snapshot, and the vCPUs of batches running on each
        self._remote_views: dict[str, NodeView] = {}
        self._remote_used: dict[str, int] = {}
        #: GPU units of the batches running on each (node, GPU index) of the other nodes
        self._remote_gpu_used: dict[tuple[str, int | None], int] = {}
        self._gpus = gpus
        self._executor = executor
        self._clock = clock
        self._capacity = vcpu_capacity
        self._warm = warm
        self._max_queue = max_queue
        self._profiles = profiles or NoProfiles()
        #: profiles trimmed to this node's GPU slice sizes, by (function, version, sizes)
        self._trimmed: dict[tuple[str, int, frozenset[int]], Profile | None] = {}
        self._last_runnable: tuple[object, Mapping[str, Profile]] | None = None
        self._queues: dict[tuple[str, str], deque[Job]] = {}
        self._pending: dict[str, _Pending] = {}
        self._limits: dict[str, FunctionLimits] = {}
        #: the version each function's limits were computed from (recomputed when it changes)
        self._limits_of: dict[str, FunctionVersion] = {}
        self._workflows: dict[str, Workflow] = {}
        self._running: dict[int, _Running] = {}
        #: batches in flight per function, kept as batches start and end (for the snapshot)
        self._running_count: dict[str, int] = {}
        self._used_vcpu = 0
        self._timers: dict[float, asyncio.TimerHandle] = {}
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._batch_ids = 0
        #: smoothed time of a warm batch outside its execution, ms, per function
        self._overhead_ms: dict[str, float] = {}
        #: smoothed time a workflow call spends outside its stages, ms, per workflow: as
        #: measured, and as the policies see it (changed in steps of 0.1 ms)
        self._outside_ms: dict[str, float] = {}
        self._outside_shown: dict[str, float] = {}
        self._before_ms: dict[str, float] = {}
        #: completions not yet told to the policy (delivered on the next loop turn)
        self._completions: deque[Completion] = deque()
        #: told whenever what the snapshot shows changes (a call queued, a batch started or
        #: ended, jobs dropped): the cluster's state reporter
        self.on_change: Callable[[], None] | None = None
        #: told how long each decision took (snapshot and policy call, seconds): the metrics
        self.on_decision: Callable[[float], None] | None = None

    def lead_cluster(self, remote: Remote, local: Executor) -> None:
        """Schedule the other nodes too while this node leads (see the module docstring);
        this node's own batches run through `local` (the cluster's worker, which reads a
        workflow stage's inputs held on other nodes)."""
        self._remote = remote
        self._executor = local

    # ------------------------------------------------------------ calls in

    def submit(self, invocation: Invocation) -> asyncio.Future[CallResult]:
        """Queue `invocation`; the future resolves to its result or a FaasdError. A call
        already queued or running (an entry node placing it again) keeps its place."""
        known = self._pending.get(invocation.id)
        if known is not None:
            return known.future
        if not self._accepting:
            raise Unavailable("faasd is shutting down; retry on another node", retry_after_s=5)
        name = invocation.function
        app = invocation.application
        key = (app, name)
        queue = self._queues.setdefault(key, deque())
        if len(queue) >= self._max_queue:
            raise Overloaded(
                f"{len(queue)} calls are already queued for {name!r}; retry later",
                retry_after_s=1,
            )
        if self._limits_of.get(name) is not invocation.version:
            self._refresh_limits(invocation.version)
        elif (
            invocation.version.settings.vgpu
            and (self._gpus is not None or self._remote is not None)
            and self._limits[name].vgpu != self._vgpu_for(invocation.version)
        ):
            self._refresh_limits(invocation.version)  # the GPUs changed (one was lost)
        if app not in self._workflows:
            self._workflows[app] = Workflow.single(name)
        now = self._clock.now()
        job = Job(
            id=invocation.id,
            request_id=invocation.request_id or invocation.id,
            app=app,
            function=name,
            request_start_s=invocation.start_s,
            enqueued_s=now,
            deadline_s=invocation.deadline_s,
            input_node=invocation.input_node or None,
        )
        future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        if invocation.entry:  # its entry node hears how it went; nobody here awaits it
            future.add_done_callback(_retrieve)
        if self._completions:  # what ended before this call came is told first
            self._deliver_completions()
        self._pending[invocation.id] = _Pending(invocation, future, job)
        self._idle.clear()
        queue.append(job)
        self._step(Arrival(job))
        if self.on_change is not None:
            self.on_change()
        return future

    def cancel(self, invocation_id: str) -> None:
        """Forget a call whose client left, if it is still queued (a running one finishes)."""
        pending = self._pending.get(invocation_id)
        if pending is None or pending.running:
            return
        job = pending.job
        queue = self._queues.get((job.app, job.function))
        if queue is not None and job in queue:
            queue.remove(job)
        self._forget(invocation_id)

    def evict_queued(self) -> list[Invocation]:
        """Give up every queued call (this node no longer leads): their futures are
        cancelled; calls already running finish. Returns what was evicted."""
        evicted = [self._pending[job.id].invocation
                   for queue in self._queues.values() for job in queue]
        if not evicted:
            return []
        for queue in self._queues.values():
            queue.clear()
        for invocation in evicted:
            self._forget(invocation.id)
        log.info("gave up %d queued call(s): this node no longer leads", len(evicted))
        if self.on_change is not None:
            self.on_change()
        return evicted

    # ------------------------------------------------------------ lifecycle

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no call is queued or running; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Fail what is still queued (after a drain that timed out) and stop the timers."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for pending in list(self._pending.values()):
            if not pending.running and not pending.future.done():
                pending.future.set_exception(Unavailable("faasd stopped before the call ran"))
        for queue in self._queues.values():
            queue.clear()

    # ------------------------------------------------------------ views

    def queue_lengths(self) -> dict[str, int]:
        """Jobs queued per function, over every application that calls it."""
        lengths: dict[str, int] = {}
        for (_, function), queue in self._queues.items():
            lengths[function] = lengths.get(function, 0) + len(queue)
        return lengths

    def set_workflow(self, workflow: Workflow) -> None:
        """Schedule the calls of application `workflow.name` as stages of this DAG."""
        self._workflows[workflow.name] = workflow

    def remove_workflow(self, name: str) -> None:
        self._workflows.pop(name, None)
        self._outside_ms.pop(name, None)
        self._outside_shown.pop(name, None)
        self._before_ms.pop(name, None)

    def pending_total(self) -> int:
        """Calls admitted and not yet answered (queued or running), all functions."""
        return len(self._pending)

    def in_flight(self, function: str, version: int | None = None) -> int:
        """Calls of `function` (of `version`, if given) queued or running."""
        return sum(
            1
            for p in self._pending.values()
            if p.invocation.function == function
            and (version is None or p.invocation.version.version == version)
        )

    def snapshot(self) -> Snapshot:
        """This node as the policy sees it. Built on every event, so it copies only what
        changes under the policy's feet (queues, counts); the rest are read-only views."""
        node = NodeView(
            name=self.node_name,
            total_vcpu=self._capacity,
            free_vcpu=self._capacity - self._used_vcpu,
            warm=self._warm(),
            gpus=self._gpus.views() if self._gpus is not None else (),
        )
        nodes: tuple[NodeView, ...] = (node,)
        if self._remote is not None:
            others = self._remote.views()
            self._remote_views = {v.name: v for v in others}
            nodes += tuple(dataclasses.replace(v, free_vcpu=self._remote_free(v),
                                               gpus=self._remote_gpus(v))
                           for v in others)
        return Snapshot(
            now_s=self._clock.now(),
            nodes=nodes,
            queues={k: tuple(q) for k, q in self._queues.items()},
            workflows=MappingProxyType(self._workflows),
            profiles=self._runnable_profiles(),
            limits=MappingProxyType(self._limits),
            running=dict(self._running_count),
            outside_ms=MappingProxyType(self._outside_shown),
            profiles_refined=True,  # every execution refines its configuration's point
        )

    def _runnable_profiles(self) -> Mapping[str, Profile]:
        """The profiles without the GPU configurations no slice of this node can run: esg's
        GpuView counts free units, not MIG instance sizes, so a planner would otherwise pick,
        say, vgpu 4 on a GPU cut into 1g instances. A trimmed profile gets a version of its
        own (the sizes in its high bits), so plan caches never mix the two."""
        profiles = self._profiles.profiles()
        if self._gpus is None:
            return profiles
        sizes = self._gpus.sizes()
        # a profile's version changes whenever its table does (esg.model.Profile)
        signature = (sizes, tuple((name, p.version) for name, p in profiles.items()))
        last = self._last_runnable
        if last is not None and last[0] == signature:
            return last[1]  # the usual case: nothing changed since the last event
        runnable = self._trim(profiles, sizes)
        self._last_runnable = (signature, runnable)
        return runnable

    def _trim(
        self, profiles: Mapping[str, Profile], sizes: frozenset[int]
    ) -> Mapping[str, Profile]:
        trimmed: dict[str, Profile] | None = None
        for name, profile in profiles.items():
            if all(c.vgpu == 0 or c.vgpu in sizes for c in profile.latency_ms):
                continue
            if trimmed is None:
                trimmed = dict(profiles)
            key = (name, profile.version, sizes)
            if key not in self._trimmed:
                kept = {c: ms for c, ms in profile.latency_ms.items()
                        if c.vgpu == 0 or c.vgpu in sizes}
                mask = sum(1 << s for s in sizes) + 1
                self._trimmed[key] = (
                    Profile(name, kept, version=profile.version + (mask << 32)) if kept else None
                )
            cut = self._trimmed[key]
            if cut is None:
                del trimmed[name]  # nothing it can run here: planned FCFS-style at its limits
            else:
                trimmed[name] = cut
        return profiles if trimmed is None else MappingProxyType(trimmed)

    def _refresh_limits(self, version: FunctionVersion) -> None:
        vgpu = self._vgpu_for(version)
        cold_ms = self._profiles.cold_starts_ms().get(version.name)
        limits = limits_of(version, cold_ms, vgpu)
        overhead = self._overhead_ms.get(version.name)
        if overhead is not None:
            limits = dataclasses.replace(limits, overhead_ms=round(overhead, 1))
        self._limits[version.name] = limits
        self._limits_of[version.name] = version

    def _vgpu_for(self, version: FunctionVersion) -> int:
        """The GPU units `version` runs with here (see the module docstring); in a cluster,
        its units where another node has a GPU that large (the policy places it there)."""
        units = version.settings.vgpu
        if units == 0:
            return 0
        if any(g.total_units >= units for v in self._remote_views.values() for g in v.gpus):
            return units
        sizes = self._gpus.sizes() if self._gpus is not None else frozenset()
        if not sizes:
            return 0  # no GPU units on any node: on the CPU, as without GPU support
        if units not in sizes:
            have = ", ".join(map(str, sorted(sizes)))
            raise GpuUnavailable(
                f"{version.name} asks for a GPU slice of {units} unit(s) but this node offers "
                f"slices of: {have}; set resources.vgpu in its faasd.yaml to one of them"
            )
        return units

    # ------------------------------------------------------------ the policy loop

    def _step(self, event: Event) -> None:
        if self._completions:  # events reach the policy in the order they happened
            self._deliver_completions()
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        started = time.perf_counter()
        actions = self._policy.on_event(event, self.snapshot())
        if self.on_decision is not None:
            self.on_decision(time.perf_counter() - started)
        for action in actions:
            self._apply(action)

    def _apply(self, action: Action) -> None:
        if isinstance(action, Dispatch):
            self._dispatch(action)
        elif isinstance(action, WakeUp):
            self._wake_at(action.at_s)
        elif isinstance(action, Drop):
            self._drop(action)
        elif isinstance(action, Prewarm):
            # A hint the seam allows a driver to ignore (module docstring says why).
            log.debug("pre-warm of %s %s ignored", action.function, action.config)
        else:  # pragma: no cover - the Action union is closed
            raise PolicyError(f"unknown action {action!r}")

    def _dispatch(self, dispatch: Dispatch) -> None:
        if dispatch.node != self.node_name:
            self._dispatch_remote(dispatch)
            return
        if self._used_vcpu + dispatch.config.vcpu > self._capacity:
            raise PolicyError(
                f"dispatch of {dispatch.function} needs {dispatch.config.vcpu} vCPU but only "
                f"{self._capacity - self._used_vcpu} are free"
            )
        if dispatch.config.vgpu:
            known = self._gpus.views() if self._gpus is not None else ()
            if all(g.index != dispatch.gpu for g in known):
                raise PolicyError(
                    f"dispatch of {dispatch.function} names GPU {dispatch.gpu}, which this "
                    "node does not have"
                )
        self._dequeue(dispatch)
        self._used_vcpu += dispatch.config.vcpu
        self._start(dispatch)

    def _remote_free(self, view: NodeView) -> int:
        """Free vCPUs of another node: the lesser of its report and what this leader's
        batches there leave (its report lags this leader's placements; this leader does not
        know what a previous one placed)."""
        return min(view.free_vcpu, view.total_vcpu - self._remote_used.get(view.name, 0))

    def _remote_gpus(self, view: NodeView) -> tuple[GpuView, ...]:
        """Another node's GPUs, each with the lesser of its reported free units and what this
        leader's batches on it leave."""
        return tuple(dataclasses.replace(g, free_units=min(
            g.free_units, g.total_units - self._remote_gpu_used.get((view.name, g.index), 0)))
            for g in view.gpus)

    def _dispatch_remote(self, dispatch: Dispatch) -> None:
        view = self._remote_views.get(dispatch.node)
        if view is None:
            raise PolicyError(f"dispatch to unknown node {dispatch.node!r}")
        free = self._remote_free(view)
        if dispatch.config.vcpu > free:
            raise PolicyError(
                f"dispatch of {dispatch.function} to {dispatch.node} needs "
                f"{dispatch.config.vcpu} vCPU but only {free} are free")
        if dispatch.config.vgpu:
            gpu = next((g for g in self._remote_gpus(view) if g.index == dispatch.gpu), None)
            if gpu is None or gpu.free_units < dispatch.config.vgpu:
                raise PolicyError(
                    f"dispatch of {dispatch.function} to {dispatch.node} needs "
                    f"{dispatch.config.vgpu} units of GPU {dispatch.gpu}, which that node "
                    f"{'does not have' if gpu is None else f'has {gpu.free_units} free of'}")
            key = (dispatch.node, dispatch.gpu)
            self._remote_gpu_used[key] = self._remote_gpu_used.get(key, 0) + dispatch.config.vgpu
        self._dequeue(dispatch)
        used = self._remote_used.get(dispatch.node, 0)
        self._remote_used[dispatch.node] = used + dispatch.config.vcpu
        self._start(dispatch)

    def _start(self, dispatch: Dispatch) -> None:
        function = dispatch.function
        self._running_count[function] = self._running_count.get(function, 0) + 1
        invocations = []
        for job_id in dispatch.job_ids:
            pending = self._pending[job_id]
            pending.running = True
            invocations.append(pending.invocation)
            if pending.invocation.on_dispatch is not None:
                pending.invocation.on_dispatch()
        self._batch_ids += 1
        batch_id = self._batch_ids
        running = _Running(dispatch)
        self._running[batch_id] = running
        running.task = asyncio.get_running_loop().create_task(
            self._run(batch_id, dispatch, invocations), name=f"faasd-batch-{batch_id}"
        )
        if self.on_change is not None:
            self.on_change()

    def _dequeue(self, dispatch: Dispatch) -> None:
        """Take the dispatch's jobs out of their queue; PolicyError if one is not queued."""
        key = (dispatch.app, dispatch.function)
        queue = self._queues.get(key, deque())
        ids = dispatch.job_ids
        if len(ids) <= len(queue) and all(queue[i].id == ids[i] for i in range(len(ids))):
            for _ in ids:  # the usual case, FCFS: the oldest jobs, in order
                queue.popleft()
            return
        queued = {job.id for job in queue}
        missing = [j for j in ids if j not in queued]
        if missing:
            raise PolicyError(f"dispatch names jobs that are not queued: {missing}")
        taken = set(ids)
        self._queues[key] = deque(j for j in queue if j.id not in taken)

    async def _run(self, batch_id: int, dispatch: Dispatch, invocations: list[Invocation]) -> None:
        started_s = self._clock.now()
        local = dispatch.node == self.node_name and not any(i.entry for i in invocations)
        outcome = await self._execute(batch_id, dispatch, invocations, local)
        if local and outcome.ok and not outcome.cold_start:
            wall_s = self._clock.now() - started_s
            self._observe_overhead(dispatch.function, wall_s - outcome.exec_s)
        self._release(dispatch)
        del self._running[batch_id]
        if self.on_change is not None:
            self.on_change()
        if outcome.cold_start and invocations:  # a cold start was measured: a new estimate
            version = invocations[0].version
            if version is self._limits_of.get(dispatch.function):
                with contextlib.suppress(GpuUnavailable):  # the next call says so
                    self._refresh_limits(version)
        left = self._running_count[dispatch.function] - 1
        if left:
            self._running_count[dispatch.function] = left
        else:
            del self._running_count[dispatch.function]
        results = list(outcome.results)
        if len(results) != len(invocations):  # an invoker bug must not leave callers hanging
            log.error("batch %d of %s: %d results for %d calls", batch_id, dispatch.function,
                      len(results), len(invocations))
            results = [FaasdError("internal error: the batch lost its results")] * len(
                invocations
            )
        for invocation, result in zip(invocations, results, strict=True):
            pending = self._pending.get(invocation.id)
            if pending is not None and not pending.future.done():
                if isinstance(result, FaasdError):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
            self._forget(invocation.id)
        # The policy hears of the completion after the callers just answered have been
        # resumed (their answers go out first), and before any other event (see `_step`).
        self._completions.append(
            Completion(dispatch, outcome.exec_s, outcome.cold_start, outcome.ok)
        )
        if len(self._completions) == 1:
            asyncio.get_running_loop().call_soon(self._deliver_completions)

    def _release(self, dispatch: Dispatch) -> None:
        """The resources of a batch that ended, on this node or another."""
        if dispatch.node == self.node_name:
            self._used_vcpu -= dispatch.config.vcpu
            return
        self._remote_used[dispatch.node] -= dispatch.config.vcpu
        if dispatch.config.vgpu:
            self._remote_gpu_used[(dispatch.node, dispatch.gpu)] -= dispatch.config.vgpu

    async def _execute(self, batch_id: int, dispatch: Dispatch, invocations: list[Invocation],
                       local: bool) -> BatchOutcome:
        """Run the batch here (`local`: this node's calls on this node), or through the
        cluster; a bug in either fails the batch's calls, and the node keeps serving."""
        try:
            if local:
                return await self._executor.execute(dispatch.config, invocations,
                                                    self._clock.now())
            assert self._remote is not None
            return await self._remote.execute(dispatch, invocations)
        except Exception as exc:
            log.exception("batch %d of %s failed unexpectedly", batch_id, dispatch.function)
            error = FaasdError(f"internal error while running {dispatch.function}: {exc}")
            return BatchOutcome([error] * len(invocations), 0.0, False, False)

    def overhead_ms(self, function: str) -> float:
        """What a warm batch of `function` takes beyond its execution (ms), smoothed."""
        return self._overhead_ms.get(function, 0.0)

    def _observe_overhead(self, function: str, extra_s: float) -> None:
        """Smooth one warm batch's time outside its execution into the function's limits.

        Profiles hold the sandbox's own execution time; a batch also spends time being handed
        to the sandbox and answered (a socket trip, tensor copies, the invoker). A planner that
        spends its slack waiting for fuller batches finishes near the deadline, so what it does
        not plan for is what makes it late. The limits change only when the estimate moves by
        0.1 ms or more: a policy may key caches on them."""
        new = _smoothed(self._overhead_ms.get(function), extra_s)
        self._overhead_ms[function] = new
        limits = self._limits.get(function)
        if limits is not None and abs(limits.overhead_ms - new) >= 0.1:
            self._limits[function] = dataclasses.replace(limits, overhead_ms=round(new, 1))

    def outside_ms(self, workflow: str) -> float:
        """What a call of `workflow` spends outside its stages (ms), smoothed."""
        return self._outside_ms.get(workflow, 0.0)

    def observe_outside(self, workflow: str, seconds: float) -> None:
        """Smooth one call's time outside its stages (`WorkflowResult.outside_s`: the hops
        between stages and the rendering of the answer) into what the policies see
        (`Snapshot.outside_ms`). A planner that spends the SLO to its end is late by this
        much unless it leaves it over; like the per-batch overhead, the figure the policies
        see moves in steps of 0.1 ms or more."""
        new = _smoothed(self._outside_ms.get(workflow), seconds)
        self._outside_ms[workflow] = new
        if abs(self._outside_shown.get(workflow, 0.0) - new) >= 0.1:
            self._outside_shown[workflow] = round(new, 1)

    def before_ms(self, workflow: str) -> float:
        """What a call of `workflow` spends before its source stage is submitted (ms),
        smoothed (`WorkflowResult.before_s`): reported, not given to the policies, which see
        it already as time gone from the call's deadline."""
        return self._before_ms.get(workflow, 0.0)

    def observe_before(self, workflow: str, seconds: float) -> None:
        self._before_ms[workflow] = _smoothed(self._before_ms.get(workflow), seconds)

    def _deliver_completions(self) -> None:
        while self._completions:
            completion = self._completions.popleft()
            try:
                self._deliver(completion)
            except Exception:  # a policy bug: logged, and no other call fails for it
                log.exception("the %s policy failed on a completion", self._policy.name)

    def _drop(self, drop: Drop) -> None:
        taken = set(drop.job_ids)
        key = (drop.app, drop.function)
        self._queues[key] = deque(j for j in self._queues.get(key, ()) if j.id not in taken)
        elsewhere: dict[str, list[str]] = {}
        for job_id in drop.job_ids:
            pending = self._pending.get(job_id)
            if pending is not None and pending.invocation.entry:
                elsewhere.setdefault(pending.invocation.entry, []).append(job_id)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(Unavailable(drop.reason, retry_after_s=1))
            self._forget(job_id)
        if self._remote is not None:
            for entry, ids in elsewhere.items():
                self._remote.drop(entry, drop.app, drop.function, ids, drop.reason)
        if self.on_change is not None:
            self.on_change()

    def _wake_at(self, at_s: float) -> None:
        if at_s in self._timers:
            return  # equal times coalesce
        delay = max(0.0, at_s - self._clock.now())
        loop = asyncio.get_running_loop()
        self._timers[at_s] = loop.call_later(delay, self._on_timer, at_s)

    def _on_timer(self, at_s: float) -> None:
        self._timers.pop(at_s, None)
        self._step(Timer())

    def _forget(self, invocation_id: str) -> None:
        pending = self._pending.pop(invocation_id, None)
        if pending is not None and not pending.future.done():
            pending.future.cancel()
        if not self._pending:
            self._idle.set()


def _smoothed(old_ms: float | None, seconds: float) -> float:
    """A smoothed figure (ms) moved toward one new reading of `seconds` (negative reads 0)."""
    ms = max(0.0, seconds * 1000.0)
    return ms if old_ms is None else old_ms + OVERHEAD_SMOOTHING * (ms - old_ms)


def _retrieve(future: asyncio.Future[CallResult]) -> None:
    """Mark the outcome of a call another node answers as seen (no "never retrieved")."""
    if not future.cancelled():
        future.exception()
