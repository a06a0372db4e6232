"""`POST /async-workflow/{name}` through a real daemon and real sandboxes: 202 at once, the
answer the synchronous call gives, callbacks, Idempotency-Key, checks before acceptance and
the queue limit per workflow. (`kill -9` with workflow calls queued and running:
`tests/faasd/durable/test_restart_e2e.py`.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from faasd.daemon import Daemon
from tests.faasd.builders import (
    TEXT_HANDLER,
    expected_y,
    invocation_finished,
    make_function,
    served,
)
from tests.faasd.workflows.builders import workflow_dir, write_op_model
from tests.faasd.workflows.conftest import daemon_config

pytestmark = pytest.mark.slow

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
BODY = b"1,2,3,4"
CSV = {"Content-Type": "text/csv"}


def add_slow_workflow(functions_dir: Path, workflows_dir: Path) -> None:
    """`slow`: texty (y = x @ W, after `sleep:S` in its handler) then incy (z = y + 1)."""
    make_function(functions_dir, "texty", "timeout_s: 10\n", TEXT_HANDLER)
    write_op_model(functions_dir / "incy" / "model.onnx", ["y"], "z", "Add", 1.0, width=3)
    workflow_dir(workflows_dir, "slow", """
        slo_ms: 5000
        functions: [texty, incy]
        edges: [{from: texty, to: incy}]
    """)


async def accept(s: aiohttp.ClientSession, url: str, name: str, body: bytes = BODY,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with s.post(f"{url}/async-workflow/{name}", data=body,
                      headers={**CSV, **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.json()




async def listed(s: aiohttp.ClientSession, url: str, query: str) -> list[str]:
    async with s.get(f"{url}/system/invocations?{query}") as resp:
        assert resp.status == 200, await resp.text()
        return [c["id"] for c in await resp.json()]


def assert_same_numbers(got: Any, expected: Any) -> None:
    """The same JSON document, numbers equal to float32 precision."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (got, expected)
        for key, value in expected.items():
            assert_same_numbers(got[key], value)
    else:
        np.testing.assert_allclose(np.array(got, dtype=float), np.array(expected, dtype=float),
                                   rtol=1e-6)


async def test_an_async_call_answers_what_the_synchronous_call_answers(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        for name in ("forkjoin", "twosinks"):
            async with s.post(f"{url}/workflow/{name}", data=BODY, headers=CSV) as resp:
                assert resp.status == 200
                synchronous = await resp.json()
            status, headers, doc = await accept(s, url, name)
            assert status == 202 and doc == {"id": headers["X-Call-Id"], "status": "queued"}
            assert headers["Location"] == f"/system/invocations/{doc['id']}"
            done = await invocation_finished(s, url, doc["id"])
            assert done["status"] == "succeeded", done
            assert (done["kind"], done["workflow"], done["attempts"]) == ("workflow", name, 1)
            assert "function" not in done and done["status_code"] == 200
            assert_same_numbers(done["result"], synchronous)
            async with s.get(f"{url}/system/invocations/{doc['id']}/result") as resp:
                assert resp.status == 200 and resp.headers["X-Workflow-Name"] == name
                assert await resp.json() == done["result"]
        # the numbers themselves: s = (2x + 1) + 3(2x); inc and dbl are the two sinks
        np.testing.assert_allclose(done["result"]["inc"]["g"], 2 * X + 1, rtol=1e-6)
        forkjoin = (await listed(s, url, "workflow=forkjoin"))[0]
        result = (await invocation_finished(s, url, forkjoin))["result"]
        np.testing.assert_allclose(result["s"], (2 * X + 1) + 3 * (2 * X), rtol=1e-6)
        assert result["total"] == pytest.approx(float(((2 * X + 1) + 3 * (2 * X)).sum()))
        assert await listed(s, url, "function=forkjoin") == []  # a workflow's, not a function's
        assert await listed(s, url, "name=forkjoin") == [forkjoin]
        async with s.get(f"{url}/system/invocations?name=a&workflow=b") as resp:
            assert resp.status == 400 and "not several" in (await resp.json())["error"]
        async with s.get(f"{url}/metrics") as resp:  # counted as the workflow's calls
            text = await resp.text()
    assert 'faasd_workflow_invocations_total{slo_met="true",workflow="forkjoin"} 2.0' in text


async def test_a_failing_stage_fails_the_call_with_the_stage_named(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        _, _, doc = await accept(s, daemon.url, "fragile", b"5,5,5,5")  # h = 10: picky fails
        done = await invocation_finished(s, daemon.url, doc["id"])
    assert done["status"] == "failed" and done["status_code"] == 502
    assert "stage 'picky' of workflow 'fragile' failed" in done["error"]
    assert done["result"]["stage"] == "picky"


async def test_checked_before_acceptance(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        status, headers, doc = await accept(s, url, "nosuch")
        assert status == 404 and headers["Content-Type"].startswith("application/json")
        assert "no workflow named 'nosuch'" in doc["error"]
        request = {"inputs": [{"name": "y", "shape": [1, 4], "datatype": "FP32",
                               "data": [1, 2, 3, 4]}]}
        status, _, doc = await accept(s, url, "chain", json.dumps(request).encode(),
                                      {"Content-Type": "application/json"})
        assert status == 400 and "unknown input 'y'" in doc["error"], doc
        status, _, doc = await accept(s, url, "src")  # a function is no workflow
        assert status == 404 and "no workflow named 'src'" in doc["error"]
        assert await listed(s, url, "") == []  # nothing was accepted


async def test_the_callback_receives_the_workflow_answer(daemon: Daemon) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with served(app) as base, aiohttp.ClientSession() as s:
        hook_url = f"{base}/hook"
        _, _, doc = await accept(s, daemon.url, "chain", headers={"X-Callback-Url": hook_url})
        async with asyncio.timeout(30):
            while not received:
                await asyncio.sleep(0.05)
        done = await invocation_finished(s, daemon.url, doc["id"])
    [(headers, body)] = received
    assert headers["X-Call-Id"] == doc["id"] and headers["X-Workflow-Name"] == "chain"
    assert "X-Function-Name" not in headers and headers["X-Function-Status"] == "200"
    np.testing.assert_allclose(json.loads(body)["out"], (2 * X + 1) * 0.5, rtol=1e-6)
    assert done["callback"]["url"] == hook_url


async def test_idempotency_keys_on_workflow_calls(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        _, _, first = await accept(s, url, "chain", headers={"Idempotency-Key": "wk-1"})
        status, headers, again = await accept(s, url, "chain",
                                              headers={"Idempotency-Key": "wk-1"})
        assert status == 202 and again["id"] == first["id"]
        assert headers["X-Idempotent-Replay"] == "true"
        status, _, doc = await accept(s, url, "chain", b"4,3,2,1", {"Idempotency-Key": "wk-1"})
        assert status == 422 and "use a new key" in doc["error"]
        done = await invocation_finished(s, url, first["id"])
        np.testing.assert_allclose(done["result"]["out"], (2 * X + 1) * 0.5, rtol=1e-6)
        assert await listed(s, url, "workflow=chain") == [first["id"]]  # one call, sent twice

        # the same key on a synchronous workflow call: kept, and answered again from the record
        keyed = {**CSV, "Idempotency-Key": "wk-2"}
        async with s.post(f"{url}/workflow/chain", data=BODY, headers=keyed) as resp:
            assert resp.status == 200 and "X-Idempotent-Replay" not in resp.headers
            call_id, answer = resp.headers["X-Call-Id"], await resp.json()
        np.testing.assert_allclose(answer["out"], (2 * X + 1) * 0.5, rtol=1e-6)
        async with s.post(f"{url}/workflow/chain", data=BODY, headers=keyed) as resp:
            assert resp.status == 200 and resp.headers["X-Idempotent-Replay"] == "true"
            assert resp.headers["X-Call-Id"] == call_id and await resp.json() == answer
        async with s.post(f"{url}/workflow/chain", data=b"4,3,2,1", headers=keyed) as resp:
            assert resp.status == 422
        assert set(await listed(s, url, "workflow=chain")) == {first["id"], call_id}


@pytest.fixture
async def slow_daemon(tmp_path: Path, functions_dir: Path,
                      workflows_dir: Path) -> AsyncIterator[Daemon]:
    add_slow_workflow(functions_dir, workflows_dir)
    config = dataclasses.replace(daemon_config(tmp_path, functions_dir, workflows_dir),
                                 max_async_queue_per_function=2)
    async with Daemon(config) as running:
        assert not running.load_errors, running.load_errors
        yield running


async def test_the_queue_limit_holds_per_workflow(slow_daemon: Daemon) -> None:
    url = slow_daemon.url
    async with aiohttp.ClientSession() as s:
        accepted = []
        for _ in range(2):
            status, _, doc = await accept(s, url, "slow", b"sleep:1")
            assert status == 202
            accepted.append(doc["id"])
        status, headers, doc = await accept(s, url, "slow", b"sleep:1")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert "workflow 'slow' has 2 async calls waiting" in doc["error"]
        # the limit is the workflow's own: its first function and another workflow still take
        async with s.post(f"{url}/async-function/texty", data=BODY,
                          headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 202
        status, _, _ = await accept(s, url, "chain")
        assert status == 202
        for call_id in accepted:
            done = await invocation_finished(s, url, call_id)
            assert done["status"] == "succeeded", done
            np.testing.assert_allclose(done["result"]["z"],
                                       [np.array(expected_y([1, 2, 3, 4])) + 1], rtol=1e-5)
        status, _, _ = await accept(s, url, "slow", b"sleep:0")
        assert status == 202  # room again
