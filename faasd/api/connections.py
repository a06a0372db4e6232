"""Who may hold a connection, and for how long: timeouts, a cap, and shedding idle ones first.

aiohttp closes nothing that is slow: a client may send half its headers, drip its body a byte
a minute, or connect and say nothing, and each such connection holds a file descriptor for
ever. The guard wraps every accepted connection and enforces, with one sweep a second:

* the headers of a request complete within `header_timeout_s` of its first byte (or of the
  connection's opening, when nothing comes at all);
* a body is received within `body_timeout_s`, or at no less than `min_body_rate_bps` on
  average since its headers ended (a large upload on a slow link is not cut, a drip is);
* a keep-alive connection with no request in progress closes after `idle_timeout_s`;
* at most `max_connections` are open: a new one past the cap closes the oldest connection
  that has no request in progress (a slow or idle one), or, when every one is busy, itself.
  A log line (at most one every `LOG_INTERVAL_S`) says when the cap is reached.

A request left half sent is answered 408 and closed the way nginx's lingering close does it:
the answer, a half-close, then whatever the client still sends is read and dropped until it
hangs up or `LINGER_S` passes. Closing a socket with unread bytes in it makes the kernel send
a reset, and a reset destroys the answer before a client that reads a moment later sees it.

Once a request's handler is running, the guard leaves it alone: a call has its function's
timeout, a deploy its `deploy_timeout_s`. The rules are `overdue` (pure: state and time in, a
reason out); `ConnectionGuard` is the shell that tracks transports and closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from faasd.api.strict_json import dumps

log = logging.getLogger("faasd.api")

#: File descriptors kept free for what is not a client connection: sandboxes' sockets, pipes
#: and shared-memory files, the state directory's files, the fork server.
FD_RESERVE = 256
LOG_INTERVAL_S = 10.0
SWEEP_INTERVAL_S = 1.0
#: How long a connection told 408 may go on sending (read and dropped) before it is closed.
LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The guard's settings (DaemonConfig's keys of the same names)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate_bps: float = 64 * 1024
    idle_timeout_s: float = 75.0
    max_connections: int = 2048


@dataclass(eq=False)
class ConnectionState:
    """One connection as the guard sees it. Times are the guard's clock, in seconds.

    Phases: idle (no request; `first_byte_s` set once bytes of the next one arrive), reading
    a body (`body_started_s` set, `body_done` false), handling (the body is in).
    """

    opened_s: float
    idle_since_s: float
    first_byte_s: float | None = None
    in_request: bool = False
    body_started_s: float | None = None
    body_bytes: int = 0
    body_done: Callable[[], bool] = field(default=lambda: True)

    @property
    def busy(self) -> bool:
        return self.in_request


def overdue(state: ConnectionState, now_s: float, limits: ConnectionLimits) -> str | None:
    """Why the connection must be closed now, or None. Pure."""
    if not state.in_request:
        if state.first_byte_s is not None:
            if now_s - state.first_byte_s > limits.header_timeout_s:
                return f"headers not complete within {limits.header_timeout_s:g} s"
            return None
        if state.idle_since_s == state.opened_s:  # never sent a byte
            if now_s - state.opened_s > limits.header_timeout_s:
                return f"no request within {limits.header_timeout_s:g} s of connecting"
            return None
        if now_s - state.idle_since_s > limits.idle_timeout_s:
            return f"idle for {limits.idle_timeout_s:g} s"
        return None
    if state.body_started_s is None or state.body_done():
        return None
    elapsed = now_s - state.body_started_s
    if elapsed <= limits.body_timeout_s:
        return None
    rate = state.body_bytes / elapsed
    if rate < limits.min_body_rate_bps:
        return (f"body not received within {limits.body_timeout_s:g} s (at {rate:.0f} B/s, "
                f"under the minimum of {limits.min_body_rate_bps:g} B/s)")
    return None


#: The first word of `overdue`'s reasons for a request left half sent.
_HALF_SENT = frozenset({"headers", "body"})


def _timeout_answer(why: str) -> bytes:
    """A whole HTTP/1.1 408 answer with a JSON body saying `why`; the connection closes."""
    body = dumps({"error": f"request timeout: {why}; send the whole request at once"}).encode()
    head = ("HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return int(soft if soft != resource.RLIM_INFINITY else 1 << 20)


def effective_cap(limits: ConnectionLimits, fd_limit: int) -> int:
    """`max_connections`, lowered so that the cap is reached before the fd limit is."""
    return max(1, min(limits.max_connections, fd_limit - FD_RESERVE))


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts bytes, reports opening and end."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self.transport: asyncio.Transport | None = None
        self._linger: asyncio.TimerHandle | None = None  # set once answered and half-closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._inner.connection_made(transport)
        self._guard.opened(self.transport)

    def answer_and_linger(self, answer: bytes) -> None:
        """Send `answer`, half-close, and from now on drop what arrives (aiohttp never sees
        it) until the client hangs up or `LINGER_S` passes; then close."""
        transport = self.transport
        assert transport is not None
        transport.write(answer)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if not transport.is_reading():  # aiohttp may have paused it: the bytes must be read
            transport.resume_reading()
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return
        if self.transport is not None:
            self._guard.received(self.transport, len(data))
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._linger is not None:
            return None  # the client hung up: the transport closes
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self.transport is not None:
            self._guard.closed(self.transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """Tracks every client connection of one listener and closes those past their limits."""

    def __init__(self, limits: ConnectionLimits, now: Callable[[], float], cap: int) -> None:
        self.limits = limits
        self.cap = cap
        self._now = now
        self._open: dict[asyncio.Transport, ConnectionState] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._last_log_s = -LOG_INTERVAL_S
        self._unlogged = 0
        self.closed_by_reason: dict[str, int] = {}

    # the protocol factory and the middleware report here

    def factory(self, inner: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server`: aiohttp's protocol, guarded."""
        return lambda: _Guarded(inner(), self)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def opened(self, transport: asyncio.Transport) -> None:
        now = self._now()
        self._open[transport] = ConnectionState(opened_s=now, idle_since_s=now)
        if len(self._open) > self.cap:
            self._shed(transport)

    def received(self, transport: asyncio.Transport, count: int) -> None:
        state = self._open.get(transport)
        if state is None:
            return
        if state.in_request:
            state.body_bytes += count
        elif state.first_byte_s is None:
            state.first_byte_s = self._now()

    def closed(self, transport: asyncio.Transport) -> None:
        self._open.pop(transport, None)

    def request_started(self, transport: asyncio.Transport | None, request: web.Request) -> None:
        state = self._open.get(transport) if transport is not None else None
        if state is None:
            return
        state.in_request = True
        state.first_byte_s = None
        state.body_started_s = self._now()
        state.body_bytes = 0
        content = request.content
        state.body_done = content.is_eof

    def request_finished(self, transport: asyncio.Transport | None) -> None:
        state = self._open.get(transport) if transport is not None else None
        if state is None:
            return
        state.in_request = False
        state.body_started_s = None
        state.idle_since_s = self._now()

    # the sweep

    def sweep(self) -> int:
        """Close every connection past its limits; how many were closed. A client that left a
        request half sent (its headers, or its body) is told so first: a 408 JSON answer, as
        any other error (one that sent nothing, or sits idle between requests, is closed
        without a word, as HTTP servers do)."""
        now = self._now()
        doomed = [(t, why) for t, s in self._open.items()
                  if (why := overdue(s, now, self.limits)) is not None]
        for transport, why in doomed:
            reason = why.split(" ")[0]
            self._close(transport, reason, _timeout_answer(why) if reason in _HALF_SENT else None)
        return len(doomed)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep()

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="connection-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def _shed(self, newcomer: asyncio.Transport) -> None:
        idle = [(s.idle_since_s if s.first_byte_s is None else s.first_byte_s, t)
                for t, s in self._open.items() if not s.busy and t is not newcomer]
        victim = min(idle, key=lambda pair: pair[0])[1] if idle else newcomer
        self._close(victim, "cap")
        self._log_cap(victim is newcomer)

    def _close(self, transport: asyncio.Transport, reason: str,
               answer: bytes | None = None) -> None:
        self._open.pop(transport, None)
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
        protocol = transport.get_protocol()
        if answer is None or not isinstance(protocol, _Guarded):
            transport.abort()
            return
        try:
            protocol.answer_and_linger(answer)
        except (OSError, RuntimeError):  # the peer is gone already, or the transport closing
            transport.abort()

    def _log_cap(self, refused: bool) -> None:
        now = self._now()
        self._unlogged += 1
        if now - self._last_log_s < LOG_INTERVAL_S:
            return
        what = ("refused the new connection: every open one has a request in progress"
                if refused else "closed the oldest idle connection to admit a new one")
        log.warning("connection cap of %d reached (%d time(s) since the last report); %s. "
                    "Raise max_connections (and the open-file limit) if these are real "
                    "clients", self.cap, self._unlogged, what)
        self._last_log_s = now
        self._unlogged = 0


CONNECTIONS = web.AppKey("connections", ConnectionGuard)


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the guard (if the app has one) that a request's headers are in and when its
    handler is done, so that only a connection without a running handler times out."""
    guard = request.app.get(CONNECTIONS)
    if guard is None:
        return await handler(request)
    transport = request.transport
    guard.request_started(transport, request)
    try:
        return await handler(request)
    finally:
        guard.request_finished(transport)
