"""The daemon's asyncio channel against the worker's blocking one, over a real socketpair."""

from __future__ import annotations

import asyncio
import socket
import threading
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
