"""The policy seam: one interface, two drivers (the daemon's controller and `esg.sim`).

A policy is a deterministic object. The driver owns the clock, the AFW queues and the
resources; it hands the policy one event at a time together with a read-only `Snapshot` of the
cluster, and the policy answers with actions. The driver then

* carries out each `Dispatch` in order: removes its jobs from their AFW queue, reserves the
  vCPUs and GPU units on the node, and runs the batch. A policy returning several dispatches in
  one answer must account for the resources its earlier dispatches in that answer take
  (`Snapshot.reserve` does the bookkeeping). A dispatch naming a job that is not queued, or that
  over-commits a node, is a policy bug: the driver raises `PolicyError`.
* delivers a `Timer` event at (or just after) every `WakeUp.at_s` it was asked for; times
  already past are delivered at once and equal times coalesce.
* fails each job of a `Drop` with its reason (the HTTP caller gets a 503/504 with that reason).
* starts the sandbox of a `Prewarm` if the node has room for it (free vCPUs and slice units,
  and the function's `max_instances`), else ignores it: a pre-warm is a hint, never a bug
  (the simulator counts the ones it ignored). Once started the sandbox is an idle warm one
  like any other, subject to keep-alive, and `NodeView.warm` shows it. A started pre-warm
  holds its shape's resources from the moment it is applied, so a policy puts its pre-warms
  after the dispatches of the same answer.

Events are delivered in time order. After a `Completion` the snapshot already shows the freed
resources. Policies never read a clock or unseeded randomness: `Snapshot.now_s` is the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import ClassVar, Protocol

from esg.model import GPU_UNITS, Config, Job, Profile, Workflow

_EMPTY: Mapping[object, object] = MappingProxyType({})


# ---------------------------------------------------------------- the cluster, read-only


@dataclass(frozen=True)
class GpuView:
    """One GPU: `free_units` of its `total_units` slice units are free. `mode` is mig or mps."""

    index: int
    free_units: int
    total_units: int = GPU_UNITS
    mode: str = "mig"


@dataclass(frozen=True)
class NodeView:
    """One worker node as the scheduler sees it.

    `warm` counts idle warm sandboxes by (function, config); `healthy` is False for a node that
    membership suspects or declared dead (never dispatch there).
    """

    name: str
    total_vcpu: int
    free_vcpu: int
    gpus: tuple[GpuView, ...] = ()
    warm: Mapping[tuple[str, Config], int] = field(default_factory=dict)
    healthy: bool = True


@dataclass(frozen=True)
class FunctionLimits:
    """Per-function knobs from the function's faasd.yaml / config.pbtxt.

    FCFS-style policies run every batch at (`max_batch`, `vcpu`, `vgpu`) and wait at most
    `max_queue_delay_s` for a batch to fill; planning policies treat `max_batch` as the largest
    batch the model accepts and `max_instances` as the cap on concurrent batches, and may plan
    with the cold-start estimates (`cold_start_ms`, `cold_start_gpu_ms`).
    """

    max_batch: int = 1
    max_queue_delay_s: float = 0.0
    vcpu: int = 1
    vgpu: int = 0
    max_instances: int | None = None
    #: Estimated time to start a new sandbox of the function (ms), and the extra for one with a
    #: GPU slice; None = unknown (a planning policy then uses its own setting).
    cold_start_ms: float | None = None
    cold_start_gpu_ms: float | None = None
    #: What a warm batch takes beyond its profiled execution (ms): handing the inputs to the
    #: sandbox and the outputs on. Measured by the daemon; 0 in the simulator's own scenarios.
    overhead_ms: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """What a policy may look at when it decides. Read-only by convention and by type.

    `queues` maps (application, function) to its AFW queue, oldest job first.
    `running` counts batches in flight per function (for `max_instances`).
    """

    now_s: float
    nodes: tuple[NodeView, ...]
    queues: Mapping[tuple[str, str], tuple[Job, ...]]
    workflows: Mapping[str, Workflow]
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    limits: Mapping[str, FunctionLimits] = field(default_factory=dict)
    running: Mapping[str, int] = field(default_factory=dict)
    #: Per application: what a call spends outside its stages' batches once its first stage
    #: is queued (ms): the hops from a stage's answer to the next stage's queue and the
    #: rendering of the answer. Measured by the daemon; a planner that spends the SLO reserves
    #: it, or finishes late by that much. Absent: 0.
    outside_ms: Mapping[str, float] = field(default_factory=dict)
    #: True where the driver itself refines `profiles` from the executions it sees (the
    #: daemon does, per configuration): a policy that corrects the table from completions
    #: too would count the same error twice. The simulator refines them only with
    #: `EngineSettings.refine_profiles`.
    profiles_refined: bool = False

    def node(self, name: str) -> NodeView:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def reserve(self, dispatch: Dispatch | Prewarm) -> Snapshot:
        """The snapshot once `dispatch` is carried out (jobs dequeued, resources held; a
        `Prewarm` only holds its shape's resources, as it does while it starts).

        Lets a policy that returns several actions in one answer see what it already took.
        """
        if isinstance(dispatch, Prewarm):
            nodes = tuple(
                _hold_on(node, dispatch.config, dispatch.gpu) if node.name == dispatch.node
                else node
                for node in self.nodes
            )
            return replace(self, nodes=nodes)
        taken = set(dispatch.job_ids)
        key = (dispatch.app, dispatch.function)
        queues = dict(self.queues)
        queues[key] = tuple(j for j in self.queues.get(key, ()) if j.id not in taken)
        nodes = tuple(
            _reserve_on(node, dispatch) if node.name == dispatch.node else node
            for node in self.nodes
        )
        running = dict(self.running)
        running[dispatch.function] = running.get(dispatch.function, 0) + 1
        return replace(self, nodes=nodes, queues=queues, running=running)


def _hold_on(node: NodeView, config: Config, gpu: int | None) -> NodeView:
    gpus = node.gpus
    if config.vgpu:
        gpus = tuple(
            replace(g, free_units=g.free_units - config.vgpu) if g.index == gpu else g
            for g in gpus
        )
    return replace(node, free_vcpu=node.free_vcpu - config.vcpu, gpus=gpus)


def _reserve_on(node: NodeView, dispatch: Dispatch) -> NodeView:
    # dict() of a read-only view hashes every key again (0.1 us a key: the daemon's view lists
    # each idle sandbox under every batch size); a dict or a view of one copies its table
    warm = node.warm.copy() if isinstance(node.warm, dict | MappingProxyType) else dict(node.warm)
    key = (dispatch.function, dispatch.config)
    if warm.get(key, 0) > 0:
        warm[key] -= 1
    return replace(_hold_on(node, dispatch.config, dispatch.gpu), warm=warm)


# ---------------------------------------------------------------- events in


@dataclass(frozen=True)
class Arrival:
    """A job entered its AFW queue (a request arrived, or all its predecessors finished)."""

    job: Job


@dataclass(frozen=True)
class Completion:
    """A dispatched batch finished on `dispatch.node` after `exec_s` of execution.

    `cold_start` tells whether a new sandbox had to be started; `ok` is False when the sandbox
    crashed or timed out (its jobs have been failed by the driver).
    """

    dispatch: Dispatch
    exec_s: float
    cold_start: bool = False
    ok: bool = True


@dataclass(frozen=True)
class Timer:
    """A wake-up the policy asked for is due (or the driver's periodic tick)."""


Event = Arrival | Completion | Timer


# ---------------------------------------------------------------- actions out


@dataclass(frozen=True)
class Dispatch:
    """Run these queued jobs of one AFW queue as one batch with `config` on `node`.

    `gpu` is the GPU index on that node when `config.vgpu > 0`. `plan` optionally carries the
    configurations the policy intends for the rest of the workflow (for reporting only; the
    next stage is planned again when it is queued).
    """

    app: str
    function: str
    job_ids: tuple[str, ...]
    config: Config
    node: str
    gpu: int | None = None
    plan: Mapping[str, Config] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.job_ids:
            raise ValueError("a dispatch needs at least one job")
        if len(self.job_ids) > self.config.batch:
            raise ValueError(
                f"{len(self.job_ids)} jobs do not fit a batch of {self.config.batch}"
            )
        if self.config.vgpu and self.gpu is None:
            raise ValueError("a dispatch with vgpu > 0 must name the GPU index")


@dataclass(frozen=True)
class WakeUp:
    """Deliver a `Timer` event at `at_s` (driver clock, seconds)."""

    at_s: float


@dataclass(frozen=True)
class Drop:
    """Give up on these queued jobs (their SLO cannot be met, or admission control refused them)."""

    app: str
    function: str
    job_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Prewarm:
    """Start one sandbox of `function` with `config`'s (vCPUs, slice) shape on `node` now,
    before any job needs it, so that a later dispatch there is a warm start.

    Several policies keep sandboxes warm ahead of demand (INFless's and Aquatope's pre-warm
    pools, Orion's DAG-aware pre-warming); without this action they could only wait for a
    dispatch to pay the cold start. `gpu` is the GPU index when `config.vgpu > 0`. The
    start takes the cold-start time (`FunctionLimits.cold_start_ms`) and holds the shape's
    vCPUs and slice units meanwhile; a policy that counts its own pre-warms in flight should
    expect them that long.
    """

    function: str
    config: Config
    node: str
    gpu: int | None = None

    def __post_init__(self) -> None:
        if self.config.vgpu and self.gpu is None:
            raise ValueError("a pre-warm with vgpu > 0 must name the GPU index")


Action = Dispatch | WakeUp | Drop | Prewarm


class Policy(Protocol):
    """A scheduling policy. Pure and deterministic: same events and snapshots, same actions."""

    name: ClassVar[str]

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        """Decide what to do now. Returns actions in the order the driver must apply them."""
        ...
