"""The leader's side of cross-node scheduling: the other nodes as its policy sees them, and
carrying out a batch whose node or calls are elsewhere.

`ClusterNodes.views()` turns the nodes' own reports (`faasd.cluster.node_state.StateBook`)
into the policy's `NodeView`s: every alive member that reported within `max_age_s`, with its
total and free vCPUs and GPU units, its idle warm sandboxes (a shape listed under each batch
size of its function, as the local pool lists its own), and unhealthy for `suspect_s` after
an entry node could not reach it. The controller counts as free the lesser of what the node
reported and what the batches it placed there since leave: its own placements count at once,
and the batches another leader placed there before a failover count from the node's next
report (a few milliseconds).

`Dispatcher.execute` is the controller's executor for such a batch: it tells each entry node
holding some of its calls to send them to the worker (`Assignment`, fenced by this leader's
term; this node's own share in process), and the batch ends when every entry has answered
with how it went. The calls' answers go from the worker to their entry nodes, not here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

from esg.model import Config
from esg.policy import Dispatch, GpuView, NodeView
from faasd.clock import Clock
from faasd.cluster.entry import LOAD_ALLOWANCE_S, Entry
from faasd.cluster.errors import NotRun
from faasd.cluster.messages import (
    Assignment,
    BatchSummary,
    MessageError,
    decode_summary,
    encode_assignment,
)
from faasd.cluster.node import Cluster, http_address
from faasd.cluster.node_state import NodeState, StateBook
from faasd.cluster.peers import PeerLost, Peers, PeerUnreachable
from faasd.controller import BatchOutcome
from faasd.errors import FaasdError
from faasd.gateway import CallResult, Invocation

log = logging.getLogger("faasd.cluster")

#: A node whose last report is older than this is not offered to the policy.
MAX_AGE_S = 3.0
#: How long a node an entry could not reach is offered as unhealthy.
SUSPECT_S = 5.0


class ClusterNodes:
    def __init__(self, *, name: str, cluster: Cluster, book: StateBook, clock: Clock,
                 batch_sizes: Callable[[str], Sequence[int]], max_age_s: float = MAX_AGE_S,
                 suspect_s: float = SUSPECT_S) -> None:
        self._name = name
        self._cluster = cluster
        self._book = book
        self._clock = clock
        self._batch_sizes = batch_sizes
        self._max_age_s = max_age_s
        self._suspect_s = suspect_s
        self._suspect_until: dict[str, float] = {}
        #: each node's view as built from its last report (the controller asks on every
        #: event; a report comes a few times a second at most)
        self._built: dict[str, tuple[NodeState, NodeView]] = {}

    def suspect(self, node: str) -> None:
        self._suspect_until[node] = self._clock.now() + self._suspect_s

    def views(self) -> tuple[NodeView, ...]:
        """The other nodes (not this one), as reported; none while this node does not lead."""
        if not self._cluster.is_leader():
            return ()
        now, wall = self._clock.now(), self._clock.wall()
        views = []
        for member in self._cluster.members():
            state = self._book.get(member.name)
            if (member.name == self._name or not member.alive or state is None
                    or wall - state.as_of_wall > self._max_age_s):
                continue
            built = self._built.get(member.name)
            if built is None or built[0] is not state:
                built = self._built[member.name] = (state, _view(state, self._batch_sizes))
            view = built[1]
            if view.healthy and self._suspect_until.get(member.name, 0.0) > now:
                view = dataclasses.replace(view, healthy=False)
            views.append(view)
        return tuple(views)


def _view(state: NodeState, batch_sizes: Callable[[str], Sequence[int]]) -> NodeView:
    """A node's report as the policy sees it: each warm shape under every batch size of its
    function (as the local pool lists its own)."""
    warm: dict[tuple[str, Config], int] = {}
    for shape in state.warm:
        for batch in batch_sizes(shape.function):
            warm[(shape.function, Config(batch, shape.vcpu, shape.vgpu))] = shape.idle
    return NodeView(
        name=state.node, total_vcpu=state.total_vcpu, free_vcpu=state.free_vcpu,
        gpus=tuple(GpuView(index=g.index, free_units=g.free_units, total_units=g.total_units,
                           mode=g.mode) for g in state.gpus),
        warm=warm, healthy=state.healthy)


class Dispatcher:
    def __init__(self, *, name: str, cluster: Cluster, entry: Entry, peers: Peers,
                 nodes: ClusterNodes) -> None:
        self._name = name
        self._cluster = cluster
        self._entry = entry
        self._peers = peers
        self._nodes = nodes
        self._batches = 0
        self._drops: set[asyncio.Future[BatchSummary]] = set()

    def views(self) -> tuple[NodeView, ...]:
        return self._nodes.views()

    async def execute(self, dispatch: Dispatch, invocations: list[Invocation]) -> BatchOutcome:
        """Run `dispatch` through its calls' entry nodes (see the module docstring)."""
        placeholder: list[CallResult | FaasdError] = [NotRun("answered by its entry node")]
        placeholder *= len(invocations)
        leader = self._cluster.leader()
        worker = http_address(self._cluster, dispatch.node)
        if not self._cluster.is_leader() or worker is None:
            # deposed, or the worker left: nothing was sent; the entries place the calls again
            return BatchOutcome(placeholder, 0.0, False, False)
        self._batches += 1
        batch = f"{self._name}/{leader.term}/{self._batches}"
        by_entry: dict[str, list[str]] = {}
        for invocation in invocations:
            by_entry.setdefault(invocation.entry or self._name, []).append(invocation.id)
        all_ids = tuple(i.id for i in invocations)
        timeout = max(i.version.settings.timeout_s for i in invocations) + LOAD_ALLOWANCE_S
        summaries = await asyncio.gather(*(
            self._assign(entry, Assignment(
                term=leader.term, batch=batch, function=dispatch.function,
                config=dispatch.config, gpu=dispatch.gpu, worker=dispatch.node,
                worker_address=worker, batch_ids=all_ids, ids=tuple(ids)), timeout)
            for entry, ids in by_entry.items()))
        if any(s.unreachable for s in summaries):
            log.warning("%s could not be reached; placing nothing there for a while",
                        dispatch.node)
            self._nodes.suspect(dispatch.node)
        return BatchOutcome(placeholder, max(s.exec_s for s in summaries),
                            any(s.cold_start for s in summaries), all(s.ok for s in summaries))

    def drop(self, entry: str, app: str, function: str, ids: Sequence[str],
             reason: str) -> None:
        """Tell `entry` that the policy dropped these calls of its (fire and forget: an entry
        that does not hear it answers them at their deadline)."""
        leader = self._cluster.leader()
        assignment = Assignment(term=leader.term, batch="", function=function,
                                config=Config(1, 1), gpu=None, worker="", worker_address="",
                                batch_ids=tuple(ids), ids=tuple(ids), drop=reason)
        task = asyncio.ensure_future(self._assign(entry, assignment, 5.0))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def _assign(self, entry: str, assignment: Assignment, timeout_s: float) -> BatchSummary:
        if entry == self._name:
            try:
                return await self._entry.assigned(assignment)
            except FaasdError as exc:  # a stale term: this node was deposed meanwhile
                log.info("batch %s not run: %s", assignment.batch, exc.message)
                return BatchSummary(ok=False)
        address = http_address(self._cluster, entry)
        if address is None:
            return BatchSummary(ok=False)  # the entry left: its callers left with it
        try:
            status, body = await self._peers.post(
                address, "/system/cluster/assign", encode_assignment(assignment), timeout_s)
        except (PeerUnreachable, PeerLost) as exc:
            log.info("entry %s did not take batch %s: %s", entry, assignment.batch, exc)
            return BatchSummary(ok=False)
        if status != 200:
            log.info("entry %s refused batch %s: %d %s", entry, assignment.batch, status,
                     body[:200].decode("utf-8", "replace"))
            return BatchSummary(ok=False)
        try:
            return decode_summary(body)
        except MessageError as exc:
            log.warning("entry %s answered batch %s with garbage: %s", entry,
                        assignment.batch, exc)
            return BatchSummary(ok=False)

