"""Slow, idle and surplus connections on a real daemon, with raw sockets: closed on time, and
the daemon keeps answering everyone else meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from faasd.api.connections import (
    CONNECTIONS,
    ConnectionGuard,
    ConnectionLimits,
    ConnectionState,
    effective_cap,
    overdue,
    track_requests,
)
from faasd.config import DaemonConfig
from faasd.daemon import Daemon

LIMITS = ConnectionLimits(header_timeout_s=10, body_timeout_s=30, min_body_rate_bps=1000,
                          idle_timeout_s=75, max_connections=100)


@pytest.mark.parametrize(
    ("state", "now", "closed"),
    [
        # opened at 0, never a byte: the header timeout counts from the opening
        (ConnectionState(opened_s=0, idle_since_s=0), 9.9, False),
        (ConnectionState(opened_s=0, idle_since_s=0), 10.1, True),
        # half its headers since 50, after a response at 40: 10 s from the first byte
        (ConnectionState(opened_s=0, idle_since_s=40, first_byte_s=50), 59, False),
        (ConnectionState(opened_s=0, idle_since_s=40, first_byte_s=50), 60.5, True),
        # keep-alive, quiet since its last answer at 40: 75 s
        (ConnectionState(opened_s=0, idle_since_s=40), 114, False),
        (ConnectionState(opened_s=0, idle_since_s=40), 115.5, True),
        # a body since 0: 40 s later with 30 kB in (750 B/s < 1000 B/s) is a drip
        (ConnectionState(0, 0, in_request=True, body_started_s=0, body_bytes=30_000,
                         body_done=lambda: False), 40, True),
        # ... 29 s in, whatever the rate, it may go on
        (ConnectionState(0, 0, in_request=True, body_started_s=0, body_bytes=0,
                         body_done=lambda: False), 29, False),
        # ... 4 MB in 40 s (100 kB/s) is slow but not a drip
        (ConnectionState(0, 0, in_request=True, body_started_s=0, body_bytes=4_000_000,
                         body_done=lambda: False), 40, False),
        # a handler at work (the body is in) is never the guard's to close
        (ConnectionState(0, 0, in_request=True, body_started_s=0), 10_000, False),
    ],
)
def test_overdue(state: ConnectionState, now: float, closed: bool) -> None:
    assert (overdue(state, now, LIMITS) is not None) is closed


def test_the_cap_stays_below_the_fd_limit() -> None:
    assert effective_cap(LIMITS, 10_000) == 100
    assert effective_cap(LIMITS, 300) == 300 - 256


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = DaemonConfig(port=0, state_dir=tmp_path / "state", header_timeout_s=1,
                          body_timeout_s=1, min_body_rate_bps=1000, idle_timeout_s=2,
                          max_connections=40, drain_timeout_s=2)
    async with Daemon(config) as running:
        yield running


async def _open(port: int, first: bytes = b"") -> tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first:
        writer.write(first)
        await writer.drain()
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes | None:
    """What the daemon wrote before it closed the connection within `timeout_s`; None if it
    stayed open."""
    got = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return got


def _assert_timeout_answer(answer: bytes | None) -> None:
    """A 408 with a JSON body that says the request timed out."""
    assert answer is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"application/json" in head, head
    assert "request timeout" in json.loads(body)["error"]


async def _healthz_ms(url: str) -> float:
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        return (time.perf_counter() - started) * 1e3


async def test_slow_and_silent_connections_are_closed_while_others_are_served(
    daemon: Daemon,
) -> None:
    port = daemon.port
    assert port is not None
    silent = [await _open(port) for _ in range(10)]
    partial = [await _open(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
               for _ in range(10)]
    drip = [await _open(port, b"POST /system/functions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            for _ in range(10)]
    try:
        assert await _healthz_ms(daemon.url) < 1000  # served beside 30 slow connections
        for _, writer in drip:  # one byte now and then: far under 1000 B/s
            writer.write(b" ")
        started = time.perf_counter()
        results = await asyncio.gather(*(_closed_within(r, 5)
                                         for r, _ in silent + partial + drip))
        assert None not in results, results.count(None)
        assert time.perf_counter() - started < 4
        assert results[:10] == [b""] * 10  # never sent a byte: closed without a word
        for answer in results[10:]:  # a request left half sent is told so, in JSON
            _assert_timeout_answer(answer)
        guard = daemon.connections
        assert guard is not None
        assert guard.open_count == 0
    finally:
        for _, writer in silent + partial + drip:
            writer.close()


async def test_the_408_reaches_a_client_whose_last_bytes_the_daemon_never_read() -> None:
    """Closing a socket with unread bytes in it makes the kernel send a reset, and a reset
    destroys what the client has not read yet: the 408 would vanish. Bytes that arrive just
    before the sweep (a drip, the rest of the headers) are routine, so the guard half-closes
    and reads on until the client hangs up, as nginx's lingering close does."""
    now = [0.0]
    guard = ConnectionGuard(LIMITS, lambda: now[0], cap=10)
    app = web.Application(middlewares=[track_requests])
    app[CONNECTIONS] = guard
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    listener = await asyncio.get_running_loop().create_server(
        guard.factory(runner.server), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await _open(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        await asyncio.sleep(0.1)  # the daemon has read the first half
        writer.write(b"X-Late: 1\r\n")  # in the daemon's socket, unread: no await since
        now[0] = LIMITS.header_timeout_s + 1
        assert guard.sweep() == 1
        await asyncio.sleep(0.1)  # a client that reads a moment later
        _assert_timeout_answer(await _closed_within(reader, 5))
        assert guard.open_count == 0
    finally:
        writer.close()
        listener.close()
        await runner.cleanup()


async def test_idle_keep_alive_is_closed_after_idle_timeout(daemon: Daemon) -> None:
    assert daemon.port is not None
    reader, writer = await _open(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    started = time.perf_counter()
    assert await _closed_within(reader, 6) is not None
    assert 1.5 < time.perf_counter() - started < 5  # idle_timeout_s is 2, the sweep 1 s
    writer.close()


async def test_past_the_cap_the_oldest_idle_connection_goes_and_it_is_logged(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    guard = daemon.connections
    assert guard is not None and daemon.port is not None
    guard.cap = 20
    caplog.set_level(logging.WARNING, "faasd.api")
    hogs = [await _open(daemon.port) for _ in range(20)]
    await asyncio.sleep(0.1)
    assert await _healthz_ms(daemon.url) < 1000
    assert await _closed_within(hogs[0][0], 1) is not None  # the oldest made room
    assert guard.open_count <= 20
    assert "connection cap of 20 reached" in caplog.text
    for _, writer in hogs:
        writer.close()
