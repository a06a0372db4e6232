"""Frames over a stream socket: blocking (the worker's side) and asyncio (the daemon's side).

Both sides send a frame's buffers with one scatter-gather `sendmsg` where the socket takes them
all, and receive a body straight into one preallocated buffer that the decoded tensors then
view, so a tensor is copied once by the kernel each way and never in Python.

The daemon's side reads through an asyncio protocol (`AsyncChannel`): the event loop reads a
small frame whole in one `read` and a large body straight into its buffer, with no
`add_reader`/`remove_reader` per receive. What a sandbox sends is not trusted: a frame over
the channel's limit is refused at its prefix (`framing.FrameTooLarge`), and a large body's
buffer grows as its bytes arrive, so a prefix that declares more than is sent costs the
daemon nothing.

With a `SharedPair`, large tensors cross through shared memory instead (one `memcpy` by the
sender; see `faasd.sandbox.sharedmem`) and only the frame's header goes through the socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Sequence
from typing import Any

from faasd.sandbox import framing
from faasd.sandbox.sharedmem import SharedPair

#: Socket buffers big enough that a squeezenet input (600 KB) crosses in a few syscalls.
SOCKET_BUFFER_BYTES = 4 * 2**20
_MAX_IOV = 512


class ChannelClosed(ConnectionError):
    """The other end closed the socket (the worker exited, or the daemon let it go)."""


def tune(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        # Capped by net.core.[rw]mem_max: the default buffer still works, only slower.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def _advance(buffers: list[memoryview], sent: int) -> list[memoryview]:
    """The buffers still to send after `sent` bytes went out."""
    while buffers and sent >= len(buffers[0]):
        sent -= len(buffers[0])
        buffers = buffers[1:]
    if buffers and sent:
        buffers = [buffers[0][sent:], *buffers[1:]]
    return buffers


def _views(buffers: Sequence[framing.Buffer]) -> list[memoryview]:
    return [memoryview(b) for b in buffers if len(b)]


def _encode(message: Any, shared: SharedPair | None) -> list[memoryview]:
    if shared is not None:
        shared.out.begin_frame()  # one frame in flight: the peer is done with the last one
    return _views(framing.encode(message, shared))


# --- blocking: the worker -------------------------------------------------------------------


def send(sock: socket.socket, message: Any, shared: SharedPair | None = None) -> None:
    pending = _encode(message, shared)
    while pending:
        pending = _advance(pending, sock.sendmsg(pending[:_MAX_IOV]))


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ChannelClosed("peer closed the channel")
        got += n


def recv(sock: socket.socket) -> Any:
    """One message in a fresh buffer: its tensors may be kept as long as the caller likes."""
    prefix = bytearray(framing.PREFIX_SIZE)
    _recv_into(sock, memoryview(prefix))
    body_bytes, header_bytes = framing.parse_prefix(prefix)
    body = bytearray(body_bytes)
    _recv_into(sock, memoryview(body))
    return framing.decode(body, header_bytes)


class Receiver:
    """Receives messages into one reused buffer, sparing a large request's page faults.

    The tensors of a message are views of that buffer: they are valid only until the next
    `recv`. The worker may do this because a request's input tensors never outlive the request
    (handlers see bodies as bytes, postprocess sees fresh outputs).
    """

    def __init__(self, sock: socket.socket, shared: SharedPair | None = None) -> None:
        self.sock = sock
        self.shared = shared
        self.prefix = bytearray(framing.PREFIX_SIZE)
        self.buffer = bytearray(0)

    def recv(self) -> Any:
        _recv_into(self.sock, memoryview(self.prefix))
        body_bytes, header_bytes = framing.parse_prefix(self.prefix)
        if len(self.buffer) < body_bytes:
            self.buffer = bytearray(body_bytes)
        body = memoryview(self.buffer)[:body_bytes]
        _recv_into(self.sock, body)
        return framing.decode(body, header_bytes, self.shared)


# --- asyncio: the daemon --------------------------------------------------------------------

#: What one read may take when no large body is being filled: a whole small frame, usually.
_SCRATCH_BYTES = 64 * 2**10
#: A body's buffer is allocated up to this at once; past it, it doubles as bytes arrive.
_FIRST_BODY_BYTES = 2**20
#: The largest frame a channel takes unless told otherwise (`AsyncChannel.open`).
DEFAULT_MAX_FRAME_BYTES = 64 * 2**20


class _FrameProtocol(asyncio.BufferedProtocol):
    """Cuts the byte stream into frames as the event loop reads it.

    A small frame is read into a scratch buffer together with its prefix (one `read` a frame);
    the rest of a large body is read straight into its own buffer. Whole frames wait, undecoded,
    in `frames` until `AsyncChannel.recv` takes them. A prefix over `max_body_bytes` fails the
    channel with `framing.FrameTooLarge`.
    """

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_body_bytes = max_body_bytes
        self.frames: collections.deque[tuple[bytearray, int]] = collections.deque()
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self._scratch = bytearray(_SCRATCH_BYTES)
        self._prefix = bytearray()
        self._body: bytearray | None = None
        #: the body's size as its prefix says (its buffer, `_body`, grows up to it)
        self._body_bytes = 0
        self._header_bytes = 0
        self._filled = 0
        self._direct = False
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        body = self._body
        if body is not None and self._body_bytes - self._filled >= _SCRATCH_BYTES:
            self._make_room(body)
            self._direct = True
            return memoryview(body)[self._filled :]
        self._direct = False
        return memoryview(self._scratch)

    def _make_room(self, body: bytearray) -> None:
        """Grow `body` (doubling, up to the size its prefix says) until the next read has at
        least a scratch buffer's room, or all the rest of the body. Only while no view of it
        is alive: from `get_buffer`, or `_feed`, which reads from the scratch buffer."""
        room = min(_SCRATCH_BYTES, self._body_bytes - self._filled)
        if len(body) - self._filled < room:
            size = min(self._body_bytes, max(2 * len(body), self._filled + room))
            body.extend(bytes(size - len(body)))  # calloc'd: only `body`'s pages are written

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._direct:
                self._filled += nbytes
                self._finish_body()
            else:
                self._feed(memoryview(self._scratch)[:nbytes])
        except framing.FrameError as exc:  # garbage: nothing after it can be trusted
            self._fail(exc)
            if self._transport is not None:
                self._transport.close()

    def _feed(self, data: memoryview) -> None:
        while data:
            if self._body is None:
                take = framing.PREFIX_SIZE - len(self._prefix)
                self._prefix += data[:take]
                data = data[take:]
                if len(self._prefix) < framing.PREFIX_SIZE:
                    return
                self._body_bytes, self._header_bytes = framing.parse_prefix(
                    self._prefix, self.max_body_bytes)
                self._prefix = bytearray()
                self._body = bytearray(min(self._body_bytes, _FIRST_BODY_BYTES))
                self._filled = 0
            else:
                self._make_room(self._body)
                take = min(len(data), len(self._body) - self._filled)
                self._body[self._filled : self._filled + take] = data[:take]
                self._filled += take
                data = data[take:]
            self._finish_body()

    def _finish_body(self) -> None:
        if self._body is None or self._filled < self._body_bytes:
            return
        self.frames.append((self._body, self._header_bytes))
        self._body = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(ChannelClosed("peer closed the channel"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc if exc is not None else ChannelClosed("the channel was closed"))

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class AsyncChannel:
    """The daemon's end of a sandbox's socketpair: frames out and in, one at a time.

    The event loop reads the socket through a protocol, so waiting for a reply costs no
    `add_reader`/`remove_reader` (and their `epoll_ctl`s) per receive, as `loop.sock_recv_into`
    does. A frame goes out with one `sendmsg` on the socket itself; what the socket does not
    take at once goes through the transport, which is then drained before `send` returns, so
    frames never interleave.
    """

    def __init__(
        self,
        sock: socket.socket,
        transport: asyncio.Transport,
        protocol: _FrameProtocol,
        shared: SharedPair | None,
    ) -> None:
        self._sock = sock
        self._transport = transport
        self._protocol = protocol
        self.shared = shared

    @classmethod
    async def open(
        cls,
        sock: socket.socket,
        shared: SharedPair | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> AsyncChannel:
        """Wrap a connected non-blocking stream socket; the channel owns it from now on. A
        frame from the peer whose body is over `max_frame_bytes` fails `recv` with
        `framing.FrameTooLarge` and closes the channel."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(
            lambda: _FrameProtocol(max_frame_bytes), sock=sock)
        transport.set_write_buffer_limits(high=0)  # pause_writing whenever bytes are queued
        return cls(sock, transport, protocol, shared)

    async def send(self, message: Any) -> None:
        """Send one frame (ChannelClosed or OSError if the peer is gone)."""
        if self._protocol.error is not None:
            raise ChannelClosed(str(self._protocol.error))
        pending = _encode(message, self.shared)
        if not self._transport.get_write_buffer_size():
            with contextlib.suppress(BlockingIOError):
                pending = _advance(pending, self._sock.sendmsg(pending[:_MAX_IOV]))
        if not pending:
            return
        self._transport.writelines(pending)
        while self._transport.get_write_buffer_size() and self._protocol.error is None:
            drained = self._protocol.drained
            if drained is None or drained.done():
                await asyncio.sleep(0)  # not paused (yet): let the loop write
            else:
                await drained
        if self._protocol.error is not None:
            raise ChannelClosed(str(self._protocol.error))

    async def recv(self) -> Any:
        """The next message (ChannelClosed or OSError once the peer is gone, FrameError if it
        sent garbage); its tensors are the caller's to keep."""
        protocol = self._protocol
        while not protocol.frames:
            if protocol.error is not None:
                raise protocol.error
            protocol.waiter = asyncio.get_running_loop().create_future()
            try:
                await protocol.waiter
            finally:
                protocol.waiter = None
        body, header_bytes = protocol.frames.popleft()
        return framing.decode(body, header_bytes, self.shared)

    def close(self) -> None:
        """Close the socket: the worker reads EOF."""
        self._transport.close()
