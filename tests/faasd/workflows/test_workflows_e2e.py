"""Workflows end to end in a real daemon: chain, fork-join, diamond and two sinks, answers
checked against numpy; a failing middle stage; the V2 ensemble view; guards on functions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from faasd.daemon import Daemon
from tests.faasd.workflows.builders import workflow_dir
from tests.faasd.workflows.conftest import daemon_config

pytestmark = pytest.mark.slow

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
BODY = b"1,2,3,4"


Answer = tuple[int, dict[str, Any], dict[str, str]]


async def post(session: aiohttp.ClientSession, url: str, **kw: Any) -> Answer:
    async with session.post(url, **kw) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_a_chain_answers_as_its_graphs_compose(daemon: Daemon) -> None:
    expected = (2 * X + 1) * 0.5
    async with aiohttp.ClientSession() as s:
        status, doc, headers = await post(s, f"{daemon.url}/workflow/chain", data=BODY,
                                          headers={"Content-Type": "text/csv"})
        assert status == 200, doc
        np.testing.assert_allclose(doc["out"], expected, rtol=1e-6)
        assert doc["total"] == pytest.approx(float(expected.sum()))
        assert headers["X-Call-Id"] and float(headers["X-Duration-Seconds"]) > 0
        assert headers["X-Faasd-Slo-Ms"] == "5000" and headers["X-Faasd-Slo-Met"] == "true"
        assert float(headers["X-Faasd-Cost"]) > 0  # three stages' vCPU-seconds, priced
        # plain tensors for the source take the same way; the sink's postprocess shapes it
        status, doc, _ = await post(s, f"{daemon.url}/workflow/chain", json={"x": X.tolist()})
        assert status == 200, doc
        np.testing.assert_allclose(doc["out"], expected, rtol=1e-6)
        async with s.get(f"{daemon.url}/metrics") as resp:
            text = await resp.text()
        async with s.get(f"{daemon.url}/system/workflow/chain") as resp:
            described = await resp.json()
    # the body read and parsed before the source stage was submitted, and the hops after it
    assert 0 < described["before_ms"] < float(headers["X-Duration-Seconds"]) * 1000
    assert described["outside_ms"] > 0
    assert 'faasd_workflow_invocations_total{slo_met="true",workflow="chain"} 2.0' in text
    assert 'faasd_workflow_duration_seconds_count{workflow="chain"} 2.0' in text
    for function in ("src", "inc", "half"):
        for kind in ("queue", "exec"):
            assert (f'faasd_workflow_stage_{kind}_seconds_count{{function_name="{function}",'
                    'workflow="chain"} 2.0') in text


async def test_a_fork_join_waits_for_both_sides(daemon: Daemon) -> None:
    expected = (2 * X + 1) + 3 * (2 * X)
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(
            post(s, f"{daemon.url}/workflow/forkjoin", data=f"{i},2,3,4".encode())
            for i in range(8)
        ))
    for i, (status, doc, _) in enumerate(results):
        assert status == 200, doc
        x = np.array([[i, 2, 3, 4]], dtype=np.float32)
        np.testing.assert_allclose(doc["s"], (2 * x + 1) + 3 * (2 * x), rtol=1e-6)
    assert results[1][1]["total"] == pytest.approx(float(expected.sum()))


async def test_a_diamond_joins_the_source_with_its_successor(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        status, doc, _ = await post(s, f"{daemon.url}/workflow/diamond", data=BODY)
    assert status == 200, doc
    np.testing.assert_allclose(doc["s"], (2 * X + 1) + 2 * X, rtol=1e-6)


async def test_several_sinks_answer_one_object_keyed_by_function(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        status, doc, _ = await post(s, f"{daemon.url}/workflow/twosinks", data=BODY)
    assert status == 200, doc
    assert set(doc) == {"inc", "dbl"}
    np.testing.assert_allclose(doc["inc"]["g"], 2 * X + 1, rtol=1e-6)
    np.testing.assert_allclose(doc["dbl"]["k"], 6 * X, rtol=1e-6)


async def test_a_failing_middle_stage_is_named_and_others_keep_working(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        bad, good = await asyncio.gather(
            post(s, f"{daemon.url}/workflow/fragile", data=b"5,5,5,5"),  # h = 10: out of 0..3
            post(s, f"{daemon.url}/workflow/fragile", data=b"0,0.5,1,1.5"),  # h = 0, 1, 2, 3
        )
        status, doc, headers = bad
        assert status == 502, doc
        assert doc["stage"] == "picky" and doc["workflow"] == "fragile"
        assert "stage 'picky' of workflow 'fragile' failed" in str(doc["error"])
        assert headers["X-Faasd-Slo-Met"] == "false"
        status, doc, _ = good
        assert status == 200, doc
        # picky gathers h by its own values: [0, 1, 2, 3] stays itself; half halves it
        np.testing.assert_allclose(doc["out"], [[0, 0.5, 1, 1.5]], rtol=1e-6)
        # bad input for the source is the caller's: 400, naming the source stage
        status, doc, _ = await post(s, f"{daemon.url}/workflow/chain", data=b"1,2")
        assert status == 400 and doc["stage"] == "src", doc
        request = {"inputs": [{"name": "y", "shape": [1, 4], "datatype": "FP32",
                               "data": [1, 2, 3, 4]}]}
        status, doc, _ = await post(s, f"{daemon.url}/v2/models/chain/infer", json=request)
        assert status == 400 and "unknown input 'y'" in str(doc["error"]), doc
        status, doc, _ = await post(s, f"{daemon.url}/workflow/nosuch", data=BODY)
        assert status == 404 and "no workflow named 'nosuch'" in str(doc["error"])


async def test_a_workflow_is_a_v2_ensemble(daemon: Daemon) -> None:
    url = f"{daemon.url}/v2/models/forkjoin"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            meta = await resp.json()
        assert meta["platform"] == "ensemble"
        assert [t["name"] for t in meta["inputs"]] == ["x"]
        assert [t["name"] for t in meta["outputs"]] == ["s"]
        async with s.get(f"{url}/ready") as resp:
            assert resp.status == 200
        async with s.get(f"{url}/config") as resp:
            config = await resp.json()
        assert [step["model_name"] for step in config["ensemble_scheduling"]["step"]] == [
            "src", "inc", "dbl", "join"]
        request = {"id": "r1", "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X.ravel().tolist()}]}
        status, doc, _ = await post(s, f"{url}/infer", json=request)
    assert status == 200, doc
    assert doc["model_name"] == "forkjoin" and doc["id"] == "r1"
    (out,) = doc["outputs"]
    assert out["name"] == "s" and out["shape"] == [1, 4]
    np.testing.assert_allclose(out["data"], ((2 * X + 1) + 6 * X).ravel(), rtol=1e-6)


async def test_functions_a_workflow_uses_are_guarded(daemon: Daemon, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.delete(f"{daemon.url}/system/functions", json={"functionName": "inc"}) as r:
            assert r.status == 409
            doc = await r.json()
        assert "used by workflow(s) ['chain', 'diamond', 'forkjoin', 'twosinks']" in doc["error"]
        async with s.get(f"{daemon.url}/system/function/inc") as r:
            assert r.status == 200  # still there
        # a workflow naming a function that does not exist changes nothing
        bad = workflow_dir(tmp_path / "more", "broken", """
            slo_ms: 100
            functions: [src, nosuch]
            edges: [{from: src, to: nosuch}]
        """)
        async with s.post(f"{daemon.url}/system/workflows", json={"path": str(bad)}) as r:
            assert r.status == 400
            doc = await r.json()
        assert "'nosuch', which is not deployed" in doc["error"] and doc["key"] == "functions"
        async with s.get(f"{daemon.url}/system/workflow/broken") as r:
            assert r.status == 404
        async with s.delete(f"{daemon.url}/system/workflows", json={"name": "twosinks"}) as r:
            assert r.status == 200
        async with s.get(f"{daemon.url}/system/workflows") as r:
            names = [w["name"] for w in await r.json()]
        assert names == ["chain", "diamond", "forkjoin", "fragile"]


async def test_subdirectories_deploy_with_the_workflow_and_survive_a_restart(
    tmp_path: Path, functions_dir: Path
) -> None:
    from tests.faasd.workflows.builders import SUM_HANDLER, op_function

    wf = workflow_dir(tmp_path / "mine", "local", """
        slo_ms: 2000
        functions: [src, triple]
        edges: [{from: src, to: triple}]
    """)
    triple = op_function(wf, "triple", ["h"], "t", "Mul", 3.0)
    (triple / "handler.py").write_text(SUM_HANDLER)
    config = daemon_config(tmp_path, functions_dir, None)
    async with Daemon(config) as first, aiohttp.ClientSession() as s:
        async with s.post(f"{first.url}/system/workflows", json={"path": str(wf)}) as r:
            assert r.status == 201, await r.text()
            doc = await r.json()
        assert doc["version"] == 1 and doc["function_status"]["triple"]["version"] == 1
        status, answer, _ = await post(s, f"{first.url}/workflow/local", data=BODY)
        assert status == 200 and answer["total"] == pytest.approx(float((6 * X).sum()))
        # Redeployed unchanged, twice: the function keeps its version, and no version number
        # is spent on a copy that is never installed.
        counter = tmp_path / "state" / "functions" / "triple" / "counter"
        spent = counter.read_text()
        for _ in range(2):
            async with s.put(f"{first.url}/system/workflows", json={"path": str(wf)}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["function_status"]["triple"]["version"] == 1
        assert counter.read_text() == spent
    async with Daemon(config) as second, aiohttp.ClientSession() as s:
        status, answer, _ = await post(s, f"{second.url}/workflow/local", data=BODY)
        assert status == 200, answer
        async with s.get(f"{second.url}/system/workflow/local") as r:
            assert (await r.json())["version"] == 3  # the POST and two PUTs
    stored = json.loads((tmp_path / "state" / "workflows" / "local.json").read_text())
    assert stored["spec"]["functions"] == ["src", "triple"]


async def test_redeploying_a_stage_under_load_loses_no_call(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Clients call the chain without pause while its middle function is redeployed twice with
    new constants; every call succeeds, each answer is one of the versions' answers, and the
    new versions do serve. A redeploy that would not fit the chain's edges is refused."""
    from tests.faasd.workflows.builders import op_function

    sources = [op_function(tmp_path / f"v{c}", "inc", ["h"], "g", "Add", c) for c in (5.0, 9.0)]
    stop = asyncio.Event()
    totals: list[float] = []
    failures: list[str] = []

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status, doc, _ = await post(s, f"{daemon.url}/workflow/chain", data=BODY)
            if status != 200:
                failures.append(f"{status}: {doc}")
            else:
                totals.append(float(doc["total"]))

    def total(constant: float) -> float:
        return float(((2 * X + constant) * 0.5).sum())

    async def served(constant: float) -> None:
        async with asyncio.timeout(60):
            while sum(1 for t in totals if t == pytest.approx(total(constant))) < 10:
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as s:
        clients = [asyncio.create_task(client(s)) for _ in range(6)]
        await served(1.0)
        for constant, source in zip((5.0, 9.0), sources, strict=True):
            async with s.put(f"{daemon.url}/system/functions", json={"path": str(source)}) as r:
                assert r.status == 200, await r.text()
            await served(constant)
        misfit = op_function(tmp_path / "misfit", "inc", ["h"], "other", "Add", 1.0)
        async with s.put(f"{daemon.url}/system/functions", json={"path": str(misfit)}) as r:
            assert r.status == 409
            doc = await r.json()
        stop.set()
        await asyncio.gather(*clients)
    assert "inc is used by workflow" in doc["error"] and "would not fit it" in doc["error"]
    assert not failures, failures[:3]
    allowed = [total(c) for c in (1.0, 5.0, 9.0)]
    assert all(any(t == pytest.approx(a) for a in allowed) for t in totals)
