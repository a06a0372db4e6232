"""Sends this node's `NodeState` to the leader: on every change, coalesced, and every second.

The controller calls `changed()` whenever a call is queued, a batch starts or ends, or a job is
dropped. The reporter waits `coalesce_s` for the rest of a burst, reads the node's state and
sends it: `PUT /system/nodes/{name}/state` on the leader's API (msgpack, with the cluster's
token, through `faasd.cluster.peers`), or straight into the book when this node leads.
Without changes it reports every `heartbeat_s`, which also carries what changes outside the
controller (a sandbox expiring). One report is in flight at a time; changes meanwhile go into
the next. After a report fails (no leader known, the leader unreachable or no longer
leading) the reporter waits `retry_s`, then the next change or heartbeat sends the state as
it is then, still dated from the oldest change it carries.

`state_of` (pure) turns the controller's `Snapshot` into the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable

from esg.policy import Snapshot
from faasd.clock import Clock
from faasd.cluster.node import Cluster, http_address
from faasd.cluster.node_state import GpuUnits, NodeState, Shape, StateBook
from faasd.cluster.peers import PeerLost, Peers, PeerUnreachable

log = logging.getLogger("faasd.cluster")


def state_of(snapshot: Snapshot, *, node: str, epoch: str, seq: int, as_of_wall: float,
             changed_wall: float, busy_vcpu: int = 0) -> NodeState:
    """This node's report, from the controller's snapshot (its first node: this one), less
    `busy_vcpu` taken by batches its controller does not count (other nodes' calls)."""
    view = snapshot.nodes[0]
    queued: Counter[str] = Counter()
    for (_, function), jobs in snapshot.queues.items():
        if jobs:
            queued[function] += len(jobs)
    shapes: dict[tuple[str, int, int], int] = {}
    for (function, config), idle in view.warm.items():
        key = (function, config.vcpu, config.vgpu)  # listed once per batch size, same count
        shapes[key] = max(shapes.get(key, 0), idle)
    return NodeState(
        node=node, epoch=epoch, seq=seq, as_of_wall=as_of_wall, changed_wall=changed_wall,
        total_vcpu=view.total_vcpu, free_vcpu=max(0, view.free_vcpu - busy_vcpu),
        healthy=view.healthy,
        queued=dict(queued), running=dict(snapshot.running),
        warm=tuple(Shape(f, c, g, n) for (f, c, g), n in sorted(shapes.items()) if n),
        gpus=tuple(GpuUnits(g.index, g.total_units, g.free_units, g.mode) for g in view.gpus),
    )


class StateReporter:
    def __init__(
        self,
        *,
        name: str,
        snapshot: Callable[[], Snapshot],
        cluster: Cluster,
        book: StateBook,
        clock: Clock,
        peers: Peers,
        arrived: Callable[[NodeState, float], None],
        busy_vcpu: Callable[[], int] = lambda: 0,
        coalesce_s: float = 0.005,
        heartbeat_s: float = 1.0,
        timeout_s: float = 2.0,
        retry_s: float = 0.1,
    ) -> None:
        """`arrived(state, received_wall)` is told of each report this node takes as leader
        (its own included); `busy_vcpu()` is what batches of other nodes' calls take here
        (the cluster's worker), which a node that does not lead reports as not free."""
        self.name = name
        self._snapshot = snapshot
        self._cluster = cluster
        self._book = book
        self._clock = clock
        self._peers = peers
        self._arrived = arrived
        self._busy_vcpu = busy_vcpu
        self._coalesce_s = coalesce_s
        self._heartbeat_s = heartbeat_s
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._epoch = os.urandom(8).hex()
        self._seq = 0
        #: wall time of the oldest change no report has carried yet (None: none since)
        self._unsent_since: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def changed(self) -> None:
        """Something the scheduler sees changed here: report it soon. Cheap (the hot path)."""
        if self._unsent_since is None:
            self._unsent_since = self._clock.wall()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="faasd-state")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._heartbeat_s)
                await asyncio.sleep(self._coalesce_s)  # the rest of the burst, in one report
            self._wake.clear()
            since, self._unsent_since = self._unsent_since, None
            try:
                sent = await self.report_now(since)
            except Exception:  # a bug here must not end the reports for good
                log.exception("reporting this node's state failed")
                sent = False
            if not sent:
                await asyncio.sleep(self._retry_s)

    async def report_now(self, since: float | None = None) -> bool:
        """Read the state and send it now; False (and `since` kept for the next) if it failed."""
        now = self._clock.wall()
        self._seq += 1
        # the leader counts the batches it placed here in its controller already
        busy = 0 if self._cluster.is_leader() else self._busy_vcpu()
        state = state_of(self._snapshot(), node=self.name, epoch=self._epoch, seq=self._seq,
                         as_of_wall=now, changed_wall=now if since is None else since,
                         busy_vcpu=busy)
        if await self._deliver(state):
            return True
        self.failures += 1
        if since is not None and (self._unsent_since is None or since < self._unsent_since):
            self._unsent_since = since
        return False

    async def _deliver(self, state: NodeState) -> bool:
        if self._cluster.is_leader():
            take(self._book, state, self._clock.wall(), self._arrived)
            return True
        leader = self._cluster.leader().name
        address = http_address(self._cluster, leader)
        if address is None:
            return False
        try:
            status, body = await self._peers.post(
                address, f"/system/nodes/{self.name}/state", state.encode(), self._timeout_s,
                method="PUT")
        except (PeerUnreachable, PeerLost) as exc:
            log.debug("could not report this node's state to %s: %s", leader, exc)
            return False
        if status == 204:
            return True
        log.debug("the leader %s refused this node's state: %d %s", leader, status,
                  body[:200].decode("utf-8", "replace"))
        return False


def take(book: StateBook, state: NodeState, received_wall: float,
         arrived: Callable[[NodeState, float], None]) -> bool:
    """The leader takes a report (from the API, or its own); False if it was stale."""
    if not book.offer(state):
        return False
    arrived(state, received_wall)
    return True
