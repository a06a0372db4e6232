"""The entry node: it owns every call that enters here until the call is answered.

In a cluster the gateway submits calls here instead of to the controller. Each call is
*placed* with the leader, which queues it in its AFW queues and schedules it with its policy:

* this node leads: the call goes into this node's controller, as on a lone node;
* another node leads: the call's metadata goes there as a `Ticket` (never its payload),
  coalesced with the other calls placed in the same instant into one request.

The leader answers with an `Assignment` (`assigned`): run these calls in batch `batch` on
`worker`. This node then sends the calls' payloads to the worker (`faasd.cluster.worker`) and
answers each caller from the worker's reply. Payloads go entry → worker directly; the leader
only places.

Nothing accepted is lost (`reconcile`, every `tick_s` and at once on a new call):

* a call placed with a leader that is no longer the leader at that term, and not yet
  assigned, is placed again with the current one (the new leader dedupes by call id);
* a call this node queued while it led goes back to being placed when the controller gives
  it up on losing the leadership (`Controller.evict_queued`);
* a worker that could not be reached, refused a stale term, or lacks the function (a deploy
  still replicating), and a leader that lacks the function, ran nothing: the call is placed
  again (`NotRun`), after a back-off growing by `backoff_s` up to `max_backoff_s`, at most
  `max_attempts` times (about 15 s by default);
* a worker that stopped answering mid-run (the connection dropped, or the gossip declared it
  failed) may have run the call: it is placed again unless the function says
  `idempotent: false`, which answers 502 (`WorkerLost`) instead;
* a call that no leader took for `place_timeout_s` (a node in a minority partition, or no
  leader at all) answers 503 with `"reason": "no_leader"`. Its SLO deadline is no reason to
  give up: a failover takes seconds, longer than most SLOs, and a call that waited it out
  runs late and says so (`X-Faasd-Slo-Met: false`), as on a lone node. [An earlier version
  answered 503 at the deadline: during a leader's failover every workflow call with a
  400 ms SLO failed at once.]

An assignment names each call at most once per entry: a call already assigned (to a batch of
a deposed leader, say) is listed as skipped, so it never runs twice from here, and the worker
does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from faasd.clock import Clock
from faasd.cluster.errors import NotRun, StaleTerm, WorkerLost
from faasd.cluster.leadership import Leader
from faasd.cluster.members import Member
from faasd.cluster.messages import (
    Assignment,
    BatchSummary,
    Job,
    MessageError,
    RunReply,
    RunRequest,
    Ticket,
    decode_refusals,
    decode_run_reply,
    encode_run,
    encode_tickets,
    remote_error,
)
from faasd.cluster.node import Cluster, http_address
from faasd.cluster.peers import PeerLost, Peers, PeerUnreachable
from faasd.cluster.worker import Worker
from faasd.errors import FaasdError, Unavailable
from faasd.gateway import CallResult, Invocation

log = logging.getLogger("faasd.cluster")

#: How long a worker may take beyond the function's own timeout (a cold start loads the model).
LOAD_ALLOWANCE_S = 60.0
#: How long a call waits for a leader to take it: twice the longest failover measured (etcd's
#: own re-election plus a 2 s lease), so only a node cut off from the majority gives up.
PLACE_TIMEOUT_S = 15.0
#: How often a waiting run checks the gossip for its worker's failure.
WATCH_S = 0.25
#: How often a waiting run probes its worker's liveness, how long a probe waits, and how many
#: in a row may go unanswered (about 9 s in all): a stopped daemon (SIGSTOP, a frozen VM) keeps
#: its sockets, and its Serf agent (a process of its own) keeps gossiping, so only a probe
#: tells it does not run.
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0
PROBE_MISSES = 3


class Submitter(Protocol):
    """What the entry needs of this node's controller (`faasd.controller.Controller`)."""

    def submit(self, invocation: Invocation) -> asyncio.Future[CallResult]: ...
    def cancel(self, invocation_id: str) -> None: ...
    def evict_queued(self) -> list[Invocation]: ...


@dataclass
class _Call:
    invocation: Invocation
    future: asyncio.Future[CallResult]
    attempt: int = 0
    #: the leader its ticket went to, and at which term (None: not placed now)
    placed: Leader | None = None
    #: placed in this node's own controller (it led): that queue's future
    local: asyncio.Future[CallResult] | None = None
    #: the batch it was assigned to: from then on only its worker's answer settles it
    batch: str | None = None
    not_before_s: float = 0.0
    #: since when no leader has taken it (None: one has, or it has not been tried yet)
    leaderless_since: float | None = None


class Entry:
    def __init__(
        self,
        *,
        name: str,
        cluster: Cluster,
        controller: Submitter,
        worker: Worker,
        peers: Peers,
        clock: Clock,
        tick_s: float = 0.05,
        backoff_s: float = 0.1,
        max_backoff_s: float = 1.0,
        max_attempts: int = 20,
        place_timeout_s: float = PLACE_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._cluster = cluster
        self._controller = controller
        self._worker = worker
        self._peers = peers
        self._clock = clock
        self._tick_s = tick_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_attempts = max_attempts
        self._place_timeout_s = place_timeout_s
        self._calls: dict[str, _Call] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        #: calls placed again after their first placement (failover, lost workers)
        self.replaced = 0

    # ------------------------------------------------------------ the gateway's side

    def submit(self, invocation: Invocation) -> asyncio.Future[CallResult]:
        future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        call = _Call(invocation, future)
        if self._cluster.is_leader():
            self._place_here(call)  # overload is the caller's 429, before anything is accepted
        self._calls[invocation.id] = call
        if call.local is None:
            self._wake.set()
        return future

    def cancel(self, invocation_id: str) -> None:
        """The caller left: forget the call (a queued one leaves its queue here; one queued
        at another leader is skipped when it is assigned)."""
        call = self._calls.pop(invocation_id, None)
        if call is not None and call.local is not None and call.batch is None:
            self._controller.cancel(invocation_id)

    def pending(self) -> int:
        return len(self._calls)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="faasd-entry")

    async def stop(self) -> None:
        for task in [self._task, *self._sends]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None

    # ------------------------------------------------------------ placing

    def _place_here(self, call: _Call) -> None:
        call.local = self._controller.submit(call.invocation)
        call.placed = self._cluster.leader()
        call.local.add_done_callback(functools.partial(self._local_done, call))

    def _local_done(self, call: _Call, future: asyncio.Future[CallResult]) -> None:
        exc = None if future.cancelled() else future.exception()  # seen, whoever settles
        if call.local is not future or call.batch is not None:
            return  # placed again since, or assigned (its worker's answer settles it)
        if self._calls.get(call.invocation.id) is not call:
            return  # the caller left
        if future.cancelled():  # evicted: this node stopped leading while it was queued
            call.local, call.placed = None, None
            self.replaced += 1
            self._wake.set()
            return
        self._settle(call, future.result() if exc is None else _as_error(exc))

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # a bug here must not stop placing calls for good
                log.exception("placing calls failed")

    def reconcile(self) -> None:
        """Place what is not placed with the current leader (see the module docstring)."""
        leading = self._cluster.is_leader()
        if not leading:
            self._controller.evict_queued()  # their futures are cancelled: `_local_done`
        leader = self._cluster.leader()
        now = self._clock.now()
        tickets: list[_Call] = []
        for call in list(self._calls.values()):
            if call.batch is not None or call.local is not None or call.placed == leader:
                continue  # running, queued here, or placed with the leader there is
            if call.placed is not None:  # its leader is gone: nothing ran, place it again
                call.placed = None
                self.replaced += 1
            if self._too_late(call, now):
                self._fail(call, Unavailable(
                    "no leader took this call in time (the cluster has no leader, or this "
                    "node cannot reach it); retry later, or at another node", retry_after_s=1,
                    reason="no_leader"))
                continue
            if now < call.not_before_s:
                continue
            if leading:
                try:
                    self._place_here(call)
                except FaasdError as exc:
                    self._fail(call, exc)
            elif leader.name is not None:
                call.placed = leader
                tickets.append(call)
            elif call.leaderless_since is None:
                call.leaderless_since = now
        if tickets:
            self._send(leader, tickets)

    def _too_late(self, call: _Call, now: float) -> bool:
        """No leader has taken it for `place_timeout_s`."""
        return (call.leaderless_since is not None
                and now - call.leaderless_since >= self._place_timeout_s)

    def _send(self, leader: Leader, calls: list[_Call]) -> None:
        for call in calls:  # the leader may hand it to a sandbox from here on
            if call.invocation.on_dispatch is not None:
                call.invocation.on_dispatch()
        task = asyncio.get_running_loop().create_task(self._send_tickets(leader, calls))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_tickets(self, leader: Leader, calls: list[_Call]) -> None:
        address = http_address(self._cluster, leader.name)
        now = self._clock.now()
        tickets = [Ticket(c.invocation.id, c.invocation.request_id, c.invocation.app,
                          c.invocation.function, now - c.invocation.start_s,
                          c.invocation.deadline_s - now, self.name, c.attempt,
                          c.invocation.input_node) for c in calls]
        status, body = 0, b""
        if address is not None:
            try:
                status, body = await self._peers.post(
                    address, "/system/cluster/jobs", encode_tickets(self.name, tickets), 5.0)
            except (PeerUnreachable, PeerLost) as exc:
                log.debug("placing %d call(s) with %s failed: %s", len(calls), leader.name, exc)
        if status == 200:
            for call in calls:
                call.leaderless_since = None
            try:
                refused = decode_refusals(body)
            except MessageError as exc:
                log.warning("the leader %s answered tickets with garbage: %s", leader.name, exc)
                refused = {}
            for call in calls:
                error = refused.get(call.invocation.id)
                if error is not None and call.batch is None and call.placed == leader:
                    # 503: the leader cannot queue it now (it lacks the function yet, or is
                    # stopping): placed again; anything else (a full queue) is the answer
                    self._settle(call, NotRun(error.message) if error.status == 503 else error)
            return
        now = self._clock.now()
        for call in calls:  # not placed: the next round places them again
            if call.placed == leader and call.batch is None:
                call.placed = None
                call.not_before_s = now + self._backoff_s
                if call.leaderless_since is None:
                    call.leaderless_since = now
        self._wake.set()

    # ------------------------------------------------------------ running what was assigned

    async def assigned(self, assignment: Assignment) -> BatchSummary:
        """Run this node's share of a batch the leader placed; how it went (the leader's
        completion of the batch). StaleTerm if a newer leader is known."""
        if not self._cluster.fence.admit(assignment.term):
            raise StaleTerm(assignment.term, self._cluster.fence.max_term)
        mine: list[_Call] = []
        skipped: list[str] = []
        for call_id in assignment.ids:
            call = self._calls.get(call_id)
            if call is None or call.batch is not None:
                skipped.append(call_id)  # its caller left, or it runs in another batch
            else:
                call.batch = assignment.batch
                mine.append(call)
        if assignment.drop is not None:
            for call in mine:
                self._fail(call, Unavailable(assignment.drop, retry_after_s=1))
            return BatchSummary()
        # shielded: the leader hanging up (or dying) does not stop the calls' run
        return await asyncio.shield(self._run_share(assignment, mine, skipped))

    async def _run_share(self, a: Assignment, calls: list[_Call],
                         skipped: list[str]) -> BatchSummary:
        now = self._clock.now()
        request = RunRequest(
            term=a.term, batch=a.batch, function=a.function, config=a.config, gpu=a.gpu,
            batch_ids=a.batch_ids, skipped=tuple(skipped),
            jobs=tuple(Job(c.invocation.id, c.invocation.item, c.invocation.postprocess,
                           c.invocation.deadline_s - now, c.invocation.held,
                           c.invocation.keep_for)
                       for c in calls))
        try:
            reply = await self._exchange(a, request, calls)
        except StaleTerm as exc:
            reply = _all(calls, NotRun(exc.message), BatchSummary(ok=False))
        except PeerUnreachable as exc:
            reply = _all(calls, NotRun(str(exc)), BatchSummary(ok=False, unreachable=True))
        except PeerLost as exc:
            reply = _all(calls, _lost(a.worker, str(exc)), BatchSummary(ok=False))
        for call in calls:
            result = reply.results.get(call.invocation.id)
            if result is None:
                result = NotRun(f"{a.worker} did not answer for this call")
            self._settle(call, result)
        return reply.summary

    async def _exchange(self, a: Assignment, request: RunRequest,
                        calls: Sequence[_Call]) -> RunReply:
        if a.worker == self.name:
            return await self._worker.run(request)
        timeout = max((c.invocation.version.settings.timeout_s for c in calls), default=30.0)
        post = asyncio.ensure_future(self._peers.post(
            a.worker_address, "/system/cluster/run", encode_run(request),
            timeout + LOAD_ALLOWANCE_S))
        watch = asyncio.ensure_future(self._watch(a.worker, a.worker_address))
        try:
            await asyncio.wait([post, watch], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not post.done():  # the gossip declared the worker failed
            post.cancel()
            raise PeerLost(f"the cluster declared {a.worker} {watch.result()}")
        status, body = post.result()
        if status == 200:
            try:
                return decode_run_reply(body)
            except MessageError as exc:
                raise PeerLost(f"{a.worker} answered garbage: {exc}") from None
        if status == 409:
            raise StaleTerm(a.term, a.term + 1)
        if status in (502, 503, 504):  # shutting down, or a proxy's answer: nothing ran
            raise PeerUnreachable(f"{a.worker} answered {status}")
        return _all(calls, _error_reply(status, body), BatchSummary(ok=False))

    async def _watch(self, worker: str, address: str) -> str:
        """Returns once the gossip says `worker` is no longer alive (its status), or it left
        `PROBE_MISSES` liveness probes in a row unanswered ("unresponsive")."""
        loop = asyncio.get_running_loop()
        next_probe, misses = loop.time() + PROBE_EVERY_S, 0
        while True:
            await asyncio.sleep(WATCH_S)
            member: Member | None = next(
                (m for m in self._cluster.members() if m.name == worker), None)
            if member is None or not member.alive:
                return "gone" if member is None else str(member.status)
            if loop.time() >= next_probe:
                misses = 0 if await self._peers.alive(address, PROBE_TIMEOUT_S) else misses + 1
                if misses >= PROBE_MISSES:
                    return "unresponsive"
                next_probe = loop.time() + PROBE_EVERY_S

    # ------------------------------------------------------------ answering

    def _settle(self, call: _Call, result: CallResult | FaasdError) -> None:
        if isinstance(result, CallResult):
            if self._calls.pop(call.invocation.id, None) is call and not call.future.done():
                call.future.set_result(result)
            return
        again = isinstance(result, NotRun) or (
            isinstance(result, WorkerLost) and call.invocation.version.settings.idempotent)
        if again and call.attempt + 1 < self._max_attempts:
            call.attempt += 1
            call.batch = call.local = call.placed = None
            call.not_before_s = self._clock.now() + min(self._max_backoff_s,
                                                         self._backoff_s * call.attempt)
            self.replaced += 1
            log.info("call %s to %s placed again (attempt %d): %s", call.invocation.id,
                     call.invocation.function, call.attempt + 1, result.message)
            self._wake.set()
            return
        if isinstance(result, WorkerLost) and not call.invocation.version.settings.idempotent:
            result = WorkerLost(
                f"{result.message}; {call.invocation.function} says idempotent: false, so the "
                "call was not run again (it may have run once)", reason="worker_lost",
                attempts=call.attempt + 1)
        self._fail(call, result)

    def _fail(self, call: _Call, error: FaasdError) -> None:
        if self._calls.pop(call.invocation.id, None) is call and not call.future.done():
            call.future.set_exception(error)


def _lost(worker: str, detail: str) -> WorkerLost:
    return WorkerLost(f"the node {worker} running this call stopped answering ({detail})",
                      reason="worker_lost")


def _all(calls: Sequence[_Call], error: FaasdError, summary: BatchSummary) -> RunReply:
    return RunReply(summary, {c.invocation.id: error for c in calls})


def _error_reply(status: int, body: bytes) -> FaasdError:
    text = body.decode("utf-8", "replace")[:500]
    return remote_error(status, f"the worker refused the batch: {text}", {})


def _as_error(exc: BaseException) -> FaasdError:
    return exc if isinstance(exc, FaasdError) else FaasdError(f"internal error: {exc}")
