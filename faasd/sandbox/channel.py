"""Frames over a stream socket: blocking (the worker's side) and asyncio (the daemon's side).

Both sides send a frame's buffers with one scatter-gather `sendmsg` where the socket takes them
all, and receive a body straight into one preallocated buffer that the decoded tensors then
view, so a tensor is copied once by the kernel each way and never in Python.

With a `SharedPair`, large tensors cross through shared memory instead (one `memcpy` by the
sender; see `faasd.sandbox.sharedmem`) and only the frame's header goes through the socket.
"""

from __future__ import annotations

import asyncio
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


async def send_async(sock: socket.socket, message: Any, shared: SharedPair | None = None) -> None:
    """Send one frame on a non-blocking socket: one sendmsg, then wait for room if needed."""
    loop = asyncio.get_running_loop()
    pending = _encode(message, shared)
    with contextlib.suppress(BlockingIOError):
        pending = _advance(pending, sock.sendmsg(pending[:_MAX_IOV]))
    for view in pending:
        await loop.sock_sendall(sock, view)


async def _recv_exactly_async(sock: socket.socket, size: int) -> bytearray:
    loop = asyncio.get_running_loop()
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise ChannelClosed("peer closed the channel")
        got += n
    return buffer


async def recv_async(sock: socket.socket, shared: SharedPair | None = None) -> Any:
    prefix = await _recv_exactly_async(sock, framing.PREFIX_SIZE)
    body_bytes, header_bytes = framing.parse_prefix(prefix)
    return framing.decode(await _recv_exactly_async(sock, body_bytes), header_bytes, shared)
