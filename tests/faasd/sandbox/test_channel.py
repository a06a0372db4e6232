"""The daemon's asyncio channel against the worker's blocking one, over a real socketpair."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import uvloop

from faasd.sandbox import channel, framing


class Peer:
    """The worker's end, blocking, in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def recv(self) -> Any:
        return await asyncio.to_thread(channel.recv, self.sock)

    async def send(self, message: Any) -> None:
        await asyncio.to_thread(channel.send, self.sock, message)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[channel.AsyncChannel, Peer]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    chan = await channel.AsyncChannel.open(ours)
    yield chan, Peer(theirs)
    chan.close()
    theirs.close()
    await asyncio.sleep(0)  # let the transport close its socket


async def test_small_and_large_frames_cross_both_ways(
    pair: tuple[channel.AsyncChannel, Peer],
) -> None:
    chan, peer = pair
    # 8 MB: more than the socket buffers take at once, so `send` must finish through the
    # transport, and the reply's body is read straight into its buffer in several reads.
    big = np.arange(2 * 2**20, dtype=np.float32).reshape(2, -1)
    for message in ({"op": "ping"}, {"op": "run", "x": big}, {"op": "ping", "n": 3}):
        received, _ = await asyncio.gather(peer.recv(), chan.send(message))
        assert received.keys() == message.keys()
        replied = await asyncio.gather(chan.recv(), peer.send(received))
        reply = replied[0]
        assert reply["op"] == message["op"]
        if "x" in message:
            np.testing.assert_array_equal(reply["x"], big)
            assert reply["x"].flags.writeable  # the caller's own buffer, not a shared view


async def test_frames_that_arrive_together_are_received_in_order(
    pair: tuple[channel.AsyncChannel, Peer],
) -> None:
    chan, peer = pair
    for i in range(5):
        await peer.send({"i": i, "t": np.full(3, i, dtype=np.int64)})
    for i in range(5):
        message = await chan.recv()
        assert message["i"] == i
        assert message["t"].tolist() == [i, i, i]


async def test_peer_closing_ends_recv_with_channel_closed_after_pending_frames(
    pair: tuple[channel.AsyncChannel, Peer],
) -> None:
    chan, peer = pair
    await peer.send({"op": "failed"})
    peer.sock.close()
    assert (await chan.recv())["op"] == "failed"
    with pytest.raises(channel.ChannelClosed):
        await chan.recv()
    with pytest.raises(OSError):  # ChannelClosed is a ConnectionError
        await chan.send({"op": "ping"})


async def test_garbage_from_the_peer_is_a_frame_error(
    pair: tuple[channel.AsyncChannel, Peer],
) -> None:
    chan, peer = pair
    await asyncio.to_thread(peer.sock.sendall, b"\xff" * 64)
    with pytest.raises(framing.FrameError):
        await chan.recv()


async def test_closing_our_end_gives_the_peer_eof(
    pair: tuple[channel.AsyncChannel, Peer],
) -> None:
    chan, peer = pair
    chan.close()
    with pytest.raises(channel.ChannelClosed):
        await peer.recv()


async def test_a_cancelled_recv_leaves_the_channel_usable(
    pair: tuple[channel.AsyncChannel, Peer],
) -> None:
    chan, peer = pair
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await chan.recv()
    await peer.send({"op": "late"})
    assert (await chan.recv())["op"] == "late"


def test_the_blocking_side_still_works_in_threads() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        thread = threading.Thread(target=channel.send, args=(a, {"k": np.ones(4)}))
        thread.start()
        assert channel.recv(b)["k"].tolist() == [1.0, 1.0, 1.0, 1.0]
        thread.join()


def test_the_daemon_side_works_on_uvloop() -> None:
    """The daemon runs on uvloop, whose transports are not asyncio's (the tests above)."""

    async def scenario() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        chan = await channel.AsyncChannel.open(ours)
        peer = Peer(theirs)
        big = np.arange(2 * 2**20, dtype=np.float32)
        received, _ = await asyncio.gather(peer.recv(), chan.send({"x": big}))
        replied = await asyncio.gather(chan.recv(), peer.send(received))
        np.testing.assert_array_equal(replied[0]["x"], big)
        for i in range(3):
            await peer.send({"i": i})
        assert [(await chan.recv())["i"] for _ in range(3)] == [0, 1, 2]
        theirs.close()
        with pytest.raises(channel.ChannelClosed):
            await chan.recv()
        chan.close()
        await asyncio.sleep(0.01)
        assert ours.fileno() == -1  # the transport closed the socket, once

    uvloop.run(scenario())


async def test_a_frame_over_the_limit_is_refused_at_its_prefix() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    chan = await channel.AsyncChannel.open(ours, max_frame_bytes=2**20)
    with theirs:
        theirs.sendall(framing.PREFIX.pack(2**31 - 1, 0))  # 8 bytes that claim 2 GiB
        with pytest.raises(framing.FrameTooLarge) as refused:
            await chan.recv()
        assert (refused.value.body_bytes, refused.value.limit_bytes) == (2**31 - 1, 2**20)
        theirs.settimeout(5)
        assert await asyncio.to_thread(theirs.recv, 1) == b""  # the channel was closed on it
    chan.close()


async def test_a_body_grows_as_its_bytes_arrive_not_as_its_prefix_says() -> None:
    """A prefix that claims 512 MiB and sends 8 bytes costs about a MiB, not 512."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    chan = await channel.AsyncChannel.open(ours, max_frame_bytes=2**30)
    tracemalloc.start()
    try:
        with theirs:
            theirs.sendall(framing.PREFIX.pack(512 * 2**20, 0) + b"12345678")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await chan.recv()
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        chan.close()
    assert peak < 8 * 2**20


async def test_a_large_frame_sent_in_uneven_pieces_arrives_whole() -> None:
    """Its buffer grows several times while it arrives, in reads of every size."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    chan = await channel.AsyncChannel.open(ours)
    big = np.arange(3 * 2**20 + 5, dtype=np.uint8)
    frame = b"".join(bytes(b) for b in framing.encode({"x": big, "n": 1}))
    pieces, start = [], 0
    for size in itertools.cycle((1, 7, 65535, 65536, 65537, 300_000, 3)):
        if start >= len(frame):
            break
        pieces.append(frame[start:start + size])
        start += size

    def send_slowly() -> None:
        for i, piece in enumerate(pieces):
            theirs.sendall(piece)
            if i % 16 == 0:
                time.sleep(0.001)  # let the daemon's side read what has come so far

    with theirs:
        received, _ = await asyncio.gather(chan.recv(), asyncio.to_thread(send_slowly))
    chan.close()
    np.testing.assert_array_equal(received["x"], big)
    assert received["n"] == 1
