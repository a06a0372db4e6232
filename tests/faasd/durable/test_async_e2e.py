"""Async calls through the real daemon: 202 at once, results, callbacks, keys, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import (
    TEXT_HANDLER,
    expected_y,
    invocation_finished,
    make_function,
    served,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    root = tmp_path / "functions"
    make_function(root, "linear")
    make_function(root, "texty", "timeout_s: 5\n", TEXT_HANDLER)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=root, max_async_queue_per_function=3)
    async with Daemon(config) as running:
        yield running


async def _accept(s: aiohttp.ClientSession, url: str, name: str, body: bytes,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with s.post(f"{url}/async-function/{name}", data=body, headers={
            "Content-Type": "text/plain" if name == "texty" else "application/json",
            **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.json()




async def test_accept_then_fetch_the_result(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        status, headers, doc = await _accept(s, url, "linear", b'{"x": [[1, 2, 3, 4]]}')
        assert status == 202 and doc["id"] == headers["X-Call-Id"]
        assert headers["Location"] == f"/system/invocations/{doc['id']}"
        done = await invocation_finished(s, url, doc["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1
        assert done["status_code"] == 200 and done["duration_s"] >= 0
        assert done["result"]["y"][0] == pytest.approx(expected_y([1, 2, 3, 4]), rel=1e-5)
        async with s.get(f"{url}/system/invocations/{doc['id']}/result") as resp:
            assert resp.status == 200 and resp.headers["X-Call-Id"] == doc["id"]
            assert (await resp.json())["y"] == done["result"]["y"]

        # a handler that raises: the call fails with the exception's message, kept as a 502
        _, _, bug = await _accept(s, url, "texty", b"bug")
        failed = await invocation_finished(s, url, bug["id"])
        assert failed["status"] == "failed" and failed["status_code"] == 502
        assert "KeyError" in failed["error"]
        async with s.get(f"{url}/system/invocations?function=texty") as resp:
            assert [c["id"] for c in await resp.json()] == [bug["id"]]


async def test_checked_before_acceptance(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        status, _, doc = await _accept(s, url, "nope", b"{}")
        assert status == 404 and "no function named 'nope'" in doc["error"]
        status, _, doc = await _accept(s, url, "linear", b'{"x": [[1, 2, 3]]}')
        assert status == 400 and "expects [N, 4]" in doc["error"]
        status, _, doc = await _accept(s, url, "linear", b'{"x": [[1, 2, 3, 4]]}',
                                       {"X-Callback-Url": "ftp://x/y"})
        assert status == 400 and "X-Callback-Url" in doc["error"]
        async with s.get(f"{url}/system/invocations/feedface") as resp:
            assert resp.status == 404
        async with s.get(f"{url}/system/invocations") as resp:
            assert await resp.json() == []  # nothing was accepted


async def test_callback_receives_the_answer(daemon: Daemon) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    tries = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal tries
        tries += 1
        if tries == 1:
            return web.Response(status=503)  # the first delivery fails: retried
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with served(app) as base, aiohttp.ClientSession() as s:
        hook_url = f"{base}/hook"
        _, _, doc = await _accept(s, daemon.url, "texty", b"1,2,3,4",
                                  {"X-Callback-Url": hook_url})
        async with asyncio.timeout(30):
            while not received:
                await asyncio.sleep(0.05)
        headers, body = received[0]
        assert headers["X-Call-Id"] == doc["id"]
        assert headers["X-Function-Status"] == "200"
        assert json.loads(body)["sum"] == pytest.approx(sum(expected_y([1, 2, 3, 4])))
        for _ in range(100):
            done = await invocation_finished(s, daemon.url, doc["id"])
            if done["callback"]["status"] is not None:
                break
            await asyncio.sleep(0.05)
        callback = done["callback"]
        assert (callback["url"], callback["attempts"], callback["status"]) == (
            hook_url, 2, "HTTP 204")
        first, second = callback["tries"]  # each try, when and how it went
        assert (first["outcome"], second["outcome"]) == ("HTTP 503", "HTTP 204")
        assert second["at"] - first["at"] >= 0.5  # the backoff


async def test_idempotency_keys(daemon: Daemon) -> None:
    url = daemon.url
    body = b'{"x": [[1, 2, 3, 4]]}'
    async with aiohttp.ClientSession() as s:
        _, _, first = await _accept(s, url, "linear", body, {"Idempotency-Key": "k-1"})
        status, headers, again = await _accept(s, url, "linear", body,
                                               {"Idempotency-Key": "k-1"})
        assert status == 202 and again["id"] == first["id"]
        assert headers["X-Idempotent-Replay"] == "true"
        status, _, doc = await _accept(s, url, "linear", b'{"x": [[4, 3, 2, 1]]}',
                                       {"Idempotency-Key": "k-1"})
        assert status == 422 and "use a new key" in doc["error"]
        await invocation_finished(s, url, first["id"])
        async with s.get(f"{url}/system/invocations?function=linear") as resp:
            assert len(await resp.json()) == 1  # one call, however many times it was sent


async def test_queue_limit_is_429_with_retry_after(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        accepted = []
        for _ in range(3):
            status, _, doc = await _accept(s, url, "texty", b"sleep:0.5")
            assert status == 202
            accepted.append(doc["id"])
        async with s.post(f"{url}/async-function/texty", data=b"sleep:0.5",
                          headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
            assert "async calls waiting" in (await resp.json())["error"]
        for call_id in accepted:
            assert (await invocation_finished(s, url, call_id))["status"] == "succeeded"
        status, _, _ = await _accept(s, url, "texty", b"1,2,3,4")
        assert status == 202  # room again


async def test_idempotency_key_on_a_synchronous_call(daemon: Daemon) -> None:
    url = f"{daemon.url}/function/texty"
    plain = {"Content-Type": "text/plain"}
    async with aiohttp.ClientSession() as s:
        async def call(body: bytes, key: str) -> tuple[int, dict[str, str], bytes]:
            async with s.post(url, data=body, headers={**plain, "Idempotency-Key": key}) as r:
                return r.status, dict(r.headers), await r.read()

        first = asyncio.ensure_future(call(b"sleep:0.6", "sync-1"))
        await asyncio.sleep(0.2)
        status, _, body = await call(b"sleep:0.6", "sync-1")  # the first still runs
        assert status == 409 and b"still running" in body
        status, headers, body = await first
        assert status == 200 and "X-Idempotent-Replay" not in headers
        assert headers["Content-Type"].startswith("application/json")
        again_status, again_headers, again_body = await call(b"sleep:0.6", "sync-1")
        assert (again_status, again_body) == (200, body)
        assert again_headers["X-Idempotent-Replay"] == "true"
        assert again_headers["X-Call-Id"] == headers["X-Call-Id"]
        for how_it_ran in ("X-Faasd-Cold-Start", "X-Faasd-Device"):  # as a call without a key
            assert again_headers[how_it_ran] == headers[how_it_ran] != ""
        status, _, body = await call(b"1,2,3,4", "sync-1")
        assert status == 422
        # a failure is kept and replayed too (Stripe keeps 5xx answers as well)
        status, _, body = await call(b"bug", "sync-2")
        assert status == 502 and b"KeyError" in body
        assert (await call(b"bug", "sync-2"))[:1] == (502,)
        async with s.post(url, data=b"1,2,3,4", headers=plain) as resp:  # no key: as before
            assert resp.status == 200 and "X-Idempotent-Replay" not in resp.headers


async def test_a_stop_lets_a_running_keyed_call_finish_and_keeps_its_answer(
        tmp_path: Path) -> None:
    """The drain covers calls run through the async record as it covers the others: a keyed
    synchronous call under way when the stop begins gets its answer, and the next start
    replays it."""
    root = tmp_path / "functions"
    make_function(root, "texty", "timeout_s: 10\n", TEXT_HANDLER)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=root, drain_timeout_s=20)
    daemon = Daemon(config)
    await daemon.__aenter__()
    stopped = False
    try:
        async with aiohttp.ClientSession() as s:
            async def keyed() -> tuple[int, str]:
                async with s.post(f"{daemon.url}/function/texty", data=b"sleep:3",
                                  headers={"Content-Type": "text/plain",
                                           "Idempotency-Key": "k"}) as resp:
                    return resp.status, await resp.text()

            waiting = asyncio.ensure_future(keyed())
            async with asyncio.timeout(20):  # until the call is running
                while not any(c.state.value == "running"
                              for c in await daemon.services.invocations.recent(  # type: ignore[union-attr]
                                  None, "texty", 10)):
                    await asyncio.sleep(0.05)
            started = asyncio.get_running_loop().time()
            await daemon.stop()
            stopped = True
            status, text = await waiting
        assert status == 200 and json.loads(text)["y"], text
        assert asyncio.get_running_loop().time() - started < 10  # the run's 3 s, not the 20 s
    finally:
        if not stopped:
            await daemon.stop()
    again = Daemon(config)
    async with again, aiohttp.ClientSession() as s, s.post(
            f"{again.url}/function/texty", data=b"sleep:3",
            headers={"Content-Type": "text/plain", "Idempotency-Key": "k"}) as resp:
        assert resp.status == 200 and resp.headers["X-Idempotent-Replay"] == "true"
        assert await resp.text() == text


async def test_a_keyed_synchronous_call_does_not_wait_behind_async_calls(
        tmp_path: Path) -> None:
    """Six async calls to `single` (one at a time) hold every async worker for seconds; a
    keyed call to `linear` still runs at once. Queued behind them it would end after the
    third (a worker frees when one ends, and takes the next queued first); at once, it ends
    before the second, 1.5 s after the first, whatever its own cold start on a busy machine."""
    root = tmp_path / "functions"
    make_function(root, "linear")
    make_function(root, "single", "timeout_s: 10\nmax_instances: 1\n", TEXT_HANDLER)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=root)
    async with Daemon(config) as daemon, aiohttp.ClientSession() as s:
        queued = [(await _accept(s, daemon.url, "single", b"sleep:1.5",
                                 {"Content-Type": "text/plain"}))[2]["id"] for _ in range(6)]
        async with s.post(f"{daemon.url}/function/linear", json={"x": [[1, 2, 3, 4]]},
                          headers={"Idempotency-Key": "now"}) as resp:
            assert resp.status == 200
            keyed = resp.headers["X-Call-Id"]
        ends = {}
        for call_id in [keyed, *queued]:
            ends[call_id] = (await invocation_finished(s, daemon.url, call_id))["finished"]
        assert ends[keyed] < sorted(ends[c] for c in queued)[1]
