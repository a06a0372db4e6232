"""MQFQ-Sticky (Fuerst, Sharma et al., 2025; Ilúvatar's `gpu_mqfq.rs`): fair queueing of
function flows with sticky dispatch, bounded by the overrun T.

From the code (reference/other-seeds.md §A): each flow keeps start/finish tags; on enqueue
S = max(VT, F_flow), F = S + c_f / w_f (c_f: the function's average execution time); the
virtual time VT is the minimum start tag over backlogged flows (kept, not reset, when none is);
a backlogged flow is Active while S_flow − VT ≤ T and Throttled otherwise; a drained flow stays
Active for a TTL after its last service (1.5 × its average execution time by default); the
dispatcher serves only Active flows: `sticky` keeps serving the previously chosen flow while it
is Active and backlogged, else the one with the minimum start tag; `select_out_len` takes the
`select_count` lowest-tag Active flows and picks the one with the fewest in flight, then the
longest queue; `warm` prefers flows with a warm sandbox that fits, then the minimum tag.

Fitted here [inferred]: a flow is an AFW queue (one function of one application), weight 1;
MQFQ chooses order and device only, so each function runs at its `FunctionLimits`
configuration with batch `batch` (1: Ilúvatar dispatches single invocations); the "D
concurrent functions per GPU" gate becomes the MIG slices themselves (a dispatch needs a free
slice; `max_per_gpu` optionally caps concurrent batches per node); placement prefers a node
with a warm sandbox (the locality MQFQ-Sticky trades for). Memory residency (hot vs
host-prefetched) is not modelled: the simulator's warm sandboxes keep their weights, so the
TTL only decides when a flow counts as Inactive. It never drops and has no SLO notion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from esg.model import Config
from esg.policies.toolkit import place
from esg.policy import Action, Arrival, Completion, Dispatch, Event, FunctionLimits, Snapshot

ACTIVE, THROTTLED, INACTIVE = "active", "throttled", "inactive"


@dataclass
class Flow:
    start_tag: float = 0.0
    finish_tag: float = 0.0
    in_flight: int = 0
    last_serviced_s: float = 0.0
    service_s: float | None = None
    state: str = INACTIVE
    tags: dict[str, float] = field(default_factory=dict)


class MqfqStickyPolicy:
    name: ClassVar[str] = "mqfq-sticky"

    def __init__(
        self,
        *,
        allowed_overrun_s: float = 5.0,
        ttl_s: float = -1.5,
        variant: str = "sticky",
        select_count: int = 20,
        batch: int = 1,
        max_per_node: int | None = None,
        ewma: float = 0.3,
    ) -> None:
        if variant not in ("sticky", "select_out_len", "warm"):
            raise ValueError(f"variant must be sticky, select_out_len or warm, got {variant!r}")
        self.allowed_overrun_s = allowed_overrun_s
        self.ttl_s = ttl_s
        self.variant = variant
        self.select_count = select_count
        self.batch = batch
        self.max_per_node = max_per_node
        self.ewma = ewma
        self.flows: dict[tuple[str, str], Flow] = {}
        self.vt = 0.0
        self._sticky: tuple[str, str] | None = None
        self._per_node: dict[str, int] = {}

    def config(self, function: str, snapshot: Snapshot) -> Config:
        limits = snapshot.limits.get(function, FunctionLimits())
        table = snapshot.profiles[function].latency_ms
        wanted = Config(self.batch, limits.vcpu, limits.vgpu)
        if wanted in table:
            return wanted
        return min(table, key=lambda c: (abs(c.batch - self.batch), abs(c.vcpu - limits.vcpu),
                                         abs(c.vgpu - limits.vgpu), c))

    def service_s(self, key: tuple[str, str], snapshot: Snapshot) -> float:
        flow = self.flows[key]
        if flow.service_s is None:
            config = self.config(key[1], snapshot)
            flow.service_s = snapshot.profiles[key[1]].latency_ms[config] / 1000
        return flow.service_s

    def ttl(self, key: tuple[str, str], snapshot: Snapshot) -> float:
        return -self.ttl_s * self.service_s(key, snapshot) if self.ttl_s < 0 else self.ttl_s

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            self._enqueue(event, snapshot)
        elif isinstance(event, Completion):
            d = event.dispatch
            flow = self.flows[(d.app, d.function)]
            flow.in_flight -= 1
            flow.last_serviced_s = snapshot.now_s
            old = self.service_s((d.app, d.function), snapshot)
            flow.service_s = (1 - self.ewma) * old + self.ewma * event.exec_s
            self._per_node[d.node] -= 1
        return self._pump(snapshot)

    def _enqueue(self, event: Arrival, snapshot: Snapshot) -> None:
        key = (event.job.app, event.job.function)
        flow = self.flows.setdefault(key, Flow(start_tag=self.vt, finish_tag=self.vt))
        start = max(self.vt, flow.finish_tag)
        flow.finish_tag = start + self.service_s(key, snapshot)
        flow.tags[event.job.id] = start
        if flow.state == INACTIVE:
            flow.state = ACTIVE

    def refresh(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        """Update VT and every flow's state; the backlogged Active flows, lowest tag first."""
        backlogged = {k: jobs for k, jobs in snapshot.queues.items() if jobs and k in self.flows}
        for key, jobs in backlogged.items():
            self.flows[key].start_tag = self.flows[key].tags[jobs[0].id]
        if backlogged:
            self.vt = min(self.flows[k].start_tag for k in backlogged)
        active = []
        for key, flow in self.flows.items():
            if key in backlogged:
                overrun = flow.start_tag - self.vt > self.allowed_overrun_s
                flow.state = THROTTLED if overrun else ACTIVE
                if not overrun:
                    active.append(key)
            elif flow.state != INACTIVE and flow.in_flight == 0 and (
                snapshot.now_s - flow.last_serviced_s >= self.ttl(key, snapshot)
            ):
                flow.state = INACTIVE
            elif flow.state == THROTTLED:
                flow.state = ACTIVE  # drained: back to Active until its TTL runs out
        return sorted(active, key=lambda k: (self.flows[k].start_tag, k))

    def choose(self, active: list[tuple[str, str]], snapshot: Snapshot) -> list[tuple[str, str]]:
        """Active flows in the order the variant tries them."""
        if self.variant == "sticky" and self._sticky in active:
            return [self._sticky, *(k for k in active if k != self._sticky)]
        if self.variant == "select_out_len":
            head = active[: self.select_count]
            head.sort(key=lambda k: (self.flows[k].in_flight, -len(snapshot.queues[k]),
                                     self.flows[k].start_tag, k))
            return head + active[self.select_count:]
        if self.variant == "warm":
            def warm(k: tuple[str, str]) -> bool:
                config = self.config(k[1], snapshot)
                return any(n.warm.get((k[1], config), 0) for n in snapshot.nodes)
            return sorted(active, key=lambda k: (not warm(k), self.flows[k].start_tag, k))
        return active

    def _pump(self, snapshot: Snapshot) -> list[Action]:
        actions: list[Action] = []
        while True:
            dispatch = None
            for key in self.choose(self.refresh(snapshot), snapshot):
                dispatch = self._try(key, snapshot)
                if dispatch is not None:
                    break
            if dispatch is None:
                return actions
            actions.append(dispatch)
            snapshot = snapshot.reserve(dispatch)

    def _try(self, key: tuple[str, str], snapshot: Snapshot) -> Dispatch | None:
        config = self.config(key[1], snapshot)
        where = place(snapshot, key[1], config, key=lambda node, gpu: (
            self._full(node.name), -min(node.warm.get((key[1], config), 0), 1),
            -node.free_vcpu, node.name))
        if where is None or self._full(where[0]):
            return None
        jobs = snapshot.queues[key][: config.batch]
        flow = self.flows[key]
        for job in jobs:
            del flow.tags[job.id]
        flow.in_flight += 1
        flow.last_serviced_s = snapshot.now_s
        self._sticky = key
        self._per_node[where[0]] = self._per_node.get(where[0], 0) + 1
        return Dispatch(*key, tuple(j.id for j in jobs), config, where[0], gpu=where[1])

    def _full(self, node: str) -> bool:
        return self.max_per_node is not None and self._per_node.get(node, 0) >= self.max_per_node
