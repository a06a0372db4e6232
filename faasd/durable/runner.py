"""Accept, run, recover and call back asynchronous calls (the I/O shell around `store`).

A call's target is a function or a workflow (`Kind`); this module treats both alike, and only
the `execute` callable the HTTP layer provides tells them apart. `accept` records a call
durably and queues it; `workers` tasks run queued calls through the same path as a
synchronous call (`execute`) and record the answer; `start` first re-queues every call a
previous daemon left queued or running (a call accepted while the daemon was starting is both
on the record and already queued: it is queued once). Inference functions are pure, so a run
cut short by a restart is run again (unless `rerun_refusal` gives a reason not to, as for a
function, or a workflow with a stage, that says `idempotent: false`: then the call fails, 502
worker_lost, with that reason, if the run cut short had handed it to a sandbox; for such a
target the first dispatch is recorded, synced, before the sandbox gets the call, so a run that
never got that far runs again); after `max_attempts` runs that never finished, the call fails
with that reason. A stop first lets the runs under way finish (`stop(drain_s)`), as a
synchronous call would, and takes no queued call meanwhile. A call whose target is busy (the
controller answers 429) waits and tries again without using an attempt, and so does one
answered 503 (no leader, say) for up to `unavailable_retry_s`; one refused because the daemon
is stopping stays running and is taken up at the next start. (A workflow
answers 429 only when its source was refused, before any stage ran: a later stage refused
fails the call as a 502, see `StageFailed` in `faasd.workflows.runner`, so trying again never
runs a stage twice.)

Callbacks: when a call ends and it named `X-Callback-Url`, the answer is POSTed there with
`X-Call-Id`, `X-Function-Name` (a workflow's call: `X-Workflow-Name`) and `X-Function-Status`
(the answer's HTTP status, for either kind), retried with exponential backoff
(`callback_backoff_s` × 2^n) up to `callback_attempts` times; each try is recorded. Finished
calls are deleted `retention_s` after they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from faasd.clock import Clock
from faasd.durable.store import (
    Call,
    CallStore,
    Kind,
    QueueFull,
    State,
    StoreClosed,
    fingerprint,
)
from faasd.errors import FaasdError, Overloaded, Unavailable

log = logging.getLogger("faasd.durable")


class KeyReused(FaasdError):
    """An Idempotency-Key sent again with another body (RFC draft: 422)."""

    status = 422


@dataclass(frozen=True)
class Outcome:
    """What a run answered, as the synchronous call would have: status, type, body, and the
    headers a replay gives back."""

    status_code: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


#: Runs a call; the callable it is given (None: none needed) is called, synchronously, when
#: the call is handed to a sandbox, before the sandbox gets it.
OnDispatch = Callable[[], None]
Execute = Callable[[Call, OnDispatch | None], Awaitable[Outcome]]
#: why a run of the target (kind, name) that a restart cut short must not run again; None: it may
RerunRefusal = Callable[[Kind, str], str | None]
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    #: calls one function, or one workflow, may have queued or running; past it, 429
    max_queued_per_target: int = 1000
    retention_s: float = 86400.0
    max_attempts: int = 3
    workers: int = 4
    callback_attempts: int = 5
    callback_backoff_s: float = 0.5
    callback_timeout_s: float = 10.0
    busy_retry_s: float = 0.2
    #: how long a call answered 503 (not while the daemon stops) is tried again
    unavailable_retry_s: float = 60.0


class AsyncCalls:
    def __init__(self, store: CallStore, execute: Execute, clock: Clock,
                 limits: Limits | None = None,
                 rerun_refusal: RerunRefusal = lambda kind, name: None) -> None:
        self.store = store
        self.limits = limits or Limits()
        self._execute = execute
        self._rerun_refusal = rerun_refusal
        self._clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        #: the calls queued or running in this daemon: each is queued once
        self._known: set[str] = set()
        #: the runs under way (a stop lets them finish)
        self._runs: set[asyncio.Future[None]] = set()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Re-queue what a previous daemon left, resume its callbacks, start the workers."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.limits.callback_timeout_s))
        left = await asyncio.to_thread(self.store.open_calls)
        for call in left:
            self._enqueue(call.id)
        if left:
            log.info("taking up %d async call(s) a previous daemon left queued or running",
                     len(left))
        for call in await asyncio.to_thread(self.store.undelivered):
            self._spawn(self._deliver(call))
        for _ in range(self.limits.workers):
            self._spawn(self._work())
        self._spawn(self._purge())

    def stop_taking(self) -> None:
        """Take no queued call from now on (the first step of a stop)."""
        self._draining = True

    async def stop(self, drain_s: float = 0.0) -> None:
        """Let the runs under way finish, for up to `drain_s`; then stop what still runs (it
        stays `running` and runs again at the next start)."""
        self._draining = True
        if self._runs and drain_s > 0:
            await asyncio.wait(set(self._runs), timeout=drain_s)
        self._stopping = True
        for waiting in self._waiters.values():  # keyed synchronous calls: answered 503
            for future in waiting:
                if not future.done():
                    future.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        self.store.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ accepting

    async def accept(self, kind: Kind, name: str, body: bytes, content_type: str,
                     header_length: int | None, callback_url: str | None,
                     idem_key: str | None, v2_only: bool = False,
                     queued: bool = True, owner: str | None = None) -> tuple[Call, bool]:
        """The recorded call to the function or workflow `name` and whether it is an earlier
        call with the same key (a replay). A new call is queued for the workers, or with
        `queued` False left for the caller to start (`run_now`).

        Overloaded (429) past `max_queued_per_target` calls to this target; KeyReused (422)
        when the key came with another body; the row is synced to disk before this returns."""
        fp = fingerprint(name, body, content_type, header_length, v2_only)
        call = Call(id=os.urandom(16).hex(), name=name, state=State.QUEUED, body=body,
                    content_type=content_type, header_length=header_length,
                    callback_url=callback_url, idem_key=idem_key, fingerprint=fp, attempts=0,
                    created_s=self._clock.wall(), kind=kind, v2_only=v2_only, owner=owner)
        try:
            stored = await self._read(self.store.accept, call,
                                      self.limits.max_queued_per_target)
        except QueueFull as full:
            raise Overloaded(f"{kind.value} {name!r} has {full.count} async calls waiting, the "
                             "most it takes; retry later", retry_after_s=5.0) from None
        if stored.id != call.id:
            if stored.fingerprint != fp:
                raise KeyReused(f"Idempotency-Key {idem_key!r} was used for another request "
                                f"to {kind.value} {name!r}; use a new key for a new request")
            return stored, True
        if queued:
            self._enqueue(call.id)
        return stored, False

    def _enqueue(self, call_id: str) -> None:
        if call_id not in self._known:
            self._known.add(call_id)
            self._queue.put_nowait(call_id)

    async def wait(self, call_id: str) -> Call:
        """The call once it has finished (at once if it has). Unavailable (503) once the
        daemon stops: the call stays recorded, and the next start finishes it."""
        while True:
            try:
                call = None if self._stopping else await asyncio.to_thread(self.store.get,
                                                                           call_id)
            except StoreClosed:
                call = None
            if call is None:
                raise Unavailable("faasd is stopping; the call is recorded and runs when it "
                                  "starts again: retry with the same Idempotency-Key",
                                  retry_after_s=5, call_id=call_id)
            if call.done:
                return call
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(call_id, []).append(future)
            try:
                await future
            finally:
                waiting = self._waiters.get(call_id, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._waiters.pop(call_id, None)

    async def get(self, call_id: str) -> Call | None:
        return await self._read(self.store.get, call_id)

    async def recent(self, kind: Kind | None, name: str | None, limit: int,
                     owner: str | None = None) -> list[Call]:
        return await self._read(self.store.recent, kind, name, limit, owner)

    async def _read(self, method: Callable[..., T], *args: object) -> T:
        """`method(*args)` off the event loop; 503 once the daemon is stopping."""
        try:
            if self._stopping:
                raise StoreClosed
            return await asyncio.to_thread(method, *args)
        except StoreClosed:
            raise Unavailable("faasd is stopping; retry in a moment", retry_after_s=5) from None

    # ------------------------------------------------------------ running

    async def _work(self) -> None:
        while not self._draining:
            call_id = await self._queue.get()
            if self._draining:  # stopping: it stays queued, and the next start runs it
                return
            await self._take(call_id)

    def run_now(self, call_id: str) -> None:
        """Run a call accepted with `queued=False` at once, beside the workers: a keyed
        synchronous call, whose caller waits, does not queue behind the async calls.
        Unavailable (503) once the daemon is stopping: the call stays recorded, and the next
        start runs it."""
        if self._draining:
            raise Unavailable("faasd is stopping; the call is recorded and runs when it "
                              "starts again: retry with the same Idempotency-Key",
                              retry_after_s=5, call_id=call_id)
        if call_id not in self._known:
            self._known.add(call_id)
            self._spawn(self._take(call_id))

    async def _take(self, call_id: str) -> None:
        run: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runs.add(run)
        try:
            await self._run(call_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("async call %s: unexpected error; it runs again at the next start",
                          call_id)
        finally:
            self._known.discard(call_id)
            self._runs.discard(run)
            run.set_result(None)

    async def _run(self, call_id: str) -> None:
        call = await asyncio.to_thread(self.store.get, call_id)
        if call is None or call.done:
            return
        attempt = await asyncio.to_thread(self.store.start, call_id, self._clock.wall())
        if attempt > self.limits.max_attempts:
            outcome = Outcome(500, "application/json",
                              b'{"error": "the daemon stopped during every run of this call"}')
            await self._finish(call, attempt, outcome,
                               f"gave up after {attempt - 1} runs that the daemon never "
                               "finished (it stopped during each)")
            return
        refusal = self._rerun_refusal(call.kind, call.name)
        if refusal is not None and call.dispatched_s is not None:
            outcome = Outcome(502, "application/json", json.dumps({
                "error": f"worker_lost: the daemon stopped while this call ran, and {refusal}, "
                         "so it was not run again", "attempts": attempt - 1}).encode())
            await self._finish(call, attempt, outcome, None)
            return
        log.info("async call %s to %s %s: run %d", call_id, call.kind.value, call.name, attempt)
        on_dispatch = None if refusal is None else self._dispatch_marker(call.id)
        answer = await self._answer(call, on_dispatch)
        if answer is not None:
            await self._finish(call, attempt, answer, None)

    async def _answer(self, call: Call, on_dispatch: OnDispatch | None) -> Outcome | None:
        """The call's answer, or None when the daemon stopped it (the next start runs it).
        Busy (429), or not placeable for now (503: no leader, a GPU lost), it waits and tries
        again without using an attempt; a 503 for longer than `unavailable_retry_s` is the
        answer."""
        waited_s = 0.0
        while True:
            outcome = await self._execute(call, on_dispatch)
            stopping = self._draining or self._stopping
            if stopping and outcome.status_code == 503:
                return None
            retry = outcome.status_code == 429 or (
                outcome.status_code == 503 and waited_s < self.limits.unavailable_retry_s)
            if stopping or not retry:
                return outcome
            await asyncio.sleep(self.limits.busy_retry_s)
            waited_s += self.limits.busy_retry_s

    def _dispatch_marker(self, call_id: str) -> OnDispatch:
        """Marks the call dispatched, synced, once. It runs on the event loop, inside the
        dispatch: a short blocking write, only for targets that must not run twice."""
        marked = False

        def mark() -> None:
            nonlocal marked
            if not marked:
                marked = True
                try:
                    self.store.mark_dispatched(call_id, self._clock.wall())
                except Exception:  # inside the scheduler: the batch must go on regardless
                    log.exception("async call %s: could not record its dispatch; if the daemon "
                                  "dies during this run, the call runs again", call_id)

        return mark

    async def _finish(self, call: Call, attempt: int, outcome: Outcome,
                      error: str | None) -> None:
        state = State.SUCCEEDED if outcome.status_code < 400 else State.FAILED
        if error is None and state is State.FAILED:
            error = _error_text(outcome)
        finished = await asyncio.to_thread(
            self.store.finish, call.id, attempt, state, self._clock.wall(), outcome.status_code,
            outcome.content_type, outcome.body, error, outcome.headers)
        for future in self._waiters.pop(call.id, []):
            if not future.done():
                future.set_result(None)
        if not finished:
            return
        log.info("async call %s to %s %s %s (%d)", call.id, call.kind.value, call.name,
                 state.value, outcome.status_code)
        if call.callback_url:
            done = await asyncio.to_thread(self.store.get, call.id)
            if done is not None:
                self._spawn(self._deliver(done))

    async def _deliver(self, call: Call) -> None:
        assert call.callback_url is not None and self._session is not None
        headers = {**dict(call.result_headers), "X-Call-Id": call.id, name_header(call): call.name,
                   "X-Function-Status": str(call.status_code),
                   "Content-Type": call.result_type or "application/octet-stream"}
        last = call.callback_tries[-1][1] if call.callback_tries else "no try left"
        tries = call.callback_attempts
        final = None
        while final is None and tries < self.limits.callback_attempts:
            if tries:
                await asyncio.sleep(self.limits.callback_backoff_s * 2 ** (tries - 1))
            tries += 1
            try:
                async with self._session.post(call.callback_url, data=call.result or b"",
                                              headers=headers) as resp:
                    last = f"HTTP {resp.status}"
                    if resp.status < 500:  # delivered; a 4xx is the receiver's final word
                        final = last
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if final is None and tries >= self.limits.callback_attempts:
                final = f"gave up: {last}"
            await asyncio.to_thread(self.store.callback_tried, call.id, self._clock.wall(),
                                    last, final)
        if final is None:  # a restart found every try used
            final = f"gave up: {last}"
            await asyncio.to_thread(self.store.callback_settled, call.id, final)
        log.info("async call %s: callback %s after %d attempt(s)", call.id, final, tries)

    async def _purge(self) -> None:
        while True:
            before = self._clock.wall() - self.limits.retention_s
            removed = await asyncio.to_thread(self.store.purge, before)
            if removed:
                log.info("deleted %d async call result(s) older than %.0f s", removed,
                         self.limits.retention_s)
            await asyncio.sleep(min(600.0, max(1.0, self.limits.retention_s / 10)))


def name_header(call: Call) -> str:
    """The header that names a call's target in its callback and its result (OpenFaaS sends
    `X-Function-Name`; a workflow's name goes in a header of its own, so a receiver that
    serves both cannot take one for the other)."""
    return "X-Workflow-Name" if call.kind is Kind.WORKFLOW else "X-Function-Name"


def _error_text(outcome: Outcome) -> str:
    try:
        return str(json.loads(outcome.body)["error"])
    except (ValueError, KeyError, TypeError):
        return outcome.body[:200].decode(errors="replace")


__all__ = ["AsyncCalls", "Execute", "KeyReused", "Limits", "OnDispatch", "Outcome", "RerunRefusal",
           "name_header"]
