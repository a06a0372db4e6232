"""Profiles through a live daemon: the HTTP API, online refinement, restarts, the CLI."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from esg.model import Config
from esg.pricing import DEFAULT_PRICING
from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import TEXT_HANDLER

from .conftest import linear_function

pytestmark = pytest.mark.slow

Start = Callable[..., AbstractAsyncContextManager[Daemon]]


@pytest.fixture
def functions(tmp_path: Path) -> Path:
    root = tmp_path / "functions"
    linear_function(root, "lin").joinpath("faasd.yaml").write_text(
        "batching: {max_batch_size: 4, max_queue_delay_ms: 1}\n")
    linear_function(root, "nosample", sample=None)
    return root


@pytest.fixture
def start(tmp_path: Path, functions: Path) -> Start:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Daemon]:
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0,
                                    "state_dir": tmp_path / "state",
                                    "functions_dir": functions, "node_vcpu": 2,
                                    "profile_on_deploy": False}
        settings.update(overrides)
        async with Daemon(DaemonConfig(**settings)) as daemon:
            assert not daemon.load_errors, daemon.load_errors
            yield daemon

    return run


async def get(daemon: Daemon, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(daemon.url + path) as resp:
        return resp.status, await resp.json()


async def post_lines(daemon: Daemon, path: str) -> tuple[int, str, list[dict[str, Any]]]:
    async with aiohttp.ClientSession() as http, http.post(daemon.url + path) as resp:
        text = await resp.text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return resp.status, resp.content_type, lines


async def test_errors_are_json_and_say_what_to_do(start: Start) -> None:
    async with start() as daemon:
        for method in ("GET", "POST"):
            async with aiohttp.ClientSession() as http, \
                    http.request(method, daemon.url + "/system/profile/ghost") as resp:
                assert resp.status == 404
                assert "no function named 'ghost'" in (await resp.json())["error"]
        status, _, body = await post_lines(daemon, "/system/profile/nosample")
        assert status == 400
        assert "add sample.json" in body[0]["error"] and "redeploy" in body[0]["error"]
        status, _, body = await post_lines(daemon, "/system/profile/lin?kind=huge")
        assert status == 400 and "full or small" in body[0]["error"]
        status, doc = await get(daemon, "/system/profile/lin")  # known, never profiled
        assert status == 200 and doc["configurations"] == []
        assert "faasd profile lin" in doc["hint"]


async def test_profile_stream_table_refinement_and_restart(start: Start) -> None:
    async with start() as daemon:
        status, content_type, events = await post_lines(daemon, "/system/profile/lin")
        assert status == 200 and content_type == "application/x-ndjson"
        # full plan on 2 vCPUs, batches up to 4: measured 1, 2, 4 x 1, 2; fitted 3 x 1, 2
        assert events[0] == {"event": "start", "function": "lin", "version": 1, "kind": "full",
                             "measure": 6, "grid": 8, "repetitions": 3}
        assert [e["done"] for e in events[1:-1]] == [1, 2, 3, 4, 5, 6]
        done = events[-1]
        assert (done["event"], done["measured"], done["fitted"]) == ("done", 6, 2)

        _, doc = await get(daemon, "/system/profile/lin")
        assert doc["profile_version"] == done["profile_version"]
        rows = {(r["batch"], r["vcpu"]): r for r in doc["configurations"]}
        assert {k for k, r in rows.items() if r["source"] == "fitted"} == {(3, 1), (3, 2)}
        for (batch, vcpu), row in rows.items():
            expected = DEFAULT_PRICING.cost_per_request(Config(batch, vcpu), row["latency_ms"])
            assert row["cost_per_request"] == pytest.approx(expected, rel=1e-3)
        assert doc["cold_start_ms"]["count"] >= 1
        profiles = daemon.services.profiles
        assert profiles is not None
        assert profiles.profiles()["lin"].version == done["profile_version"]

        # real calls refine the point of the batch they ran at (1 call: batch 1, 1 vCPU)
        before = rows[(1, 1)]["count"]
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                async with http.post(daemon.url + "/function/lin",
                                     json={"x": [[1, 2, 3, 4]]}) as resp:
                    assert resp.status == 200
            async with http.get(daemon.url + "/metrics") as resp:
                metrics = await resp.text()
        _, doc = await get(daemon, "/system/profile/lin")
        after = {(r["batch"], r["vcpu"]): r for r in doc["configurations"]}
        # the first call started a sandbox: its cold start is recorded, its latency is not
        assert after[(1, 1)]["count"] == before + 5
        assert 'faasd_profile_refinements_total{function_name="lin"} 5.0' in metrics
        kept = doc

    async with start(profile_on_deploy=True) as again:  # the same state directory
        _, doc = await get(again, "/system/profile/lin")
        assert doc["configurations"] == kept["configurations"]
        assert doc["profile_version"] == kept["profile_version"]
        assert doc["running"] is False  # measured already: no background profile
        profiles = again.services.profiles
        assert profiles is not None and "lin" in profiles.profiles()


async def test_small_profile_in_the_background_after_a_deploy(start: Start) -> None:
    async with start(profile_on_deploy=True) as daemon:
        doc: dict[str, Any] = {}
        for _ in range(300):
            _, doc = await get(daemon, "/system/profile/lin")
            if doc["configurations"] and not doc["running"]:
                break
            await asyncio.sleep(0.1)
        measured = {(r["batch"], r["vcpu"]) for r in doc["configurations"]
                    if r["source"] == "measured"}
        assert measured == {(1, 1), (1, 2), (4, 1), (4, 2)}
        assert {r["count"] for r in doc["configurations"] if r["source"] == "measured"} == {2}
        # the profile's sandboxes were stopped once measured
        assert daemon.services.pool_stats()["functions"].get("lin", {}).get("alive", 0) == 0


async def test_one_profile_of_a_function_at_a_time(start: Start) -> None:
    async with start() as daemon, aiohttp.ClientSession() as http, \
            http.post(daemon.url + "/system/profile/lin") as first:
        assert json.loads(await first.content.readline())["event"] == "start"
        async with http.post(daemon.url + "/system/profile/lin") as second:
            assert second.status == 409
            assert "being profiled already" in (await second.json())["error"]
        lines = [json.loads(line) async for line in first.content if line.strip()]
        assert lines[-1]["event"] == "done"
        async with http.post(daemon.url + "/system/profile/lin?kind=small") as third:
            assert third.status == 200  # free again once the first one ended


async def faasd(daemon: Daemon, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faasd.cli", *args, "--gateway", daemon.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_profile_show_and_png(start: Start, tmp_path: Path) -> None:
    async with start() as daemon:
        code, out, err = await faasd(daemon, "profile", "lin", "--small")
        assert code == 0, err
        assert "profiling lin v1: 4 configurations measured 3 times each, 4 fitted" in err
        progress = [line for line in out.splitlines() if line.startswith("[")]
        assert [line.split(":")[0] for line in progress] == [
            "[1/4] batch 1, 1 vCPU", "[2/4] batch 1, 2 vCPU",
            "[3/4] batch 4, 1 vCPU", "[4/4] batch 4, 2 vCPU"]

        code, out, err = await faasd(daemon, "profile", "lin", "--show")
        assert code == 0, err
        summary, header, *rows = out.splitlines()
        assert summary.startswith("lin v1 · profile version ")
        assert header.split() == ["BATCH", "VCPU", "VGPU", "LATENCY_MS", "STD_MS",
                                  "COST/REQ_$", "COUNT", "RUNS", "SOURCE"]
        table = {(int(r.split()[0]), int(r.split()[1])): r.split() for r in rows}
        assert set(table) == {(b, v) for b in (1, 2, 3, 4) for v in (1, 2)}
        assert table[(1, 1)][-3:] == ["3", "0", "measured"]  # timed 3 times, never run
        assert table[(2, 2)][4] == "-" and table[(2, 2)][-1] == "fitted"

        png = tmp_path / "lin.png"
        code, _, err = await faasd(daemon, "profile", "lin", "--png", str(png))
        assert code == 0, err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        code, _, err = await faasd(daemon, "profile", "nosample")
        assert code == 1 and "add sample.json" in err and "[HTTP 400]" in err


def slow_function(root: Path, name: str = "slow") -> Path:
    """Each call sleeps 0.1 s in its handler: a small profile takes over a second."""
    directory = linear_function(root, name, sample=None, handler=TEXT_HANDLER)
    (directory / "sample.png").write_bytes(b"sleep:0.1")  # read by preprocess, not a picture
    return directory


async def deploy(daemon: Daemon, directory: Path) -> int:
    async with aiohttp.ClientSession() as http, http.post(
        daemon.url + "/system/functions", json={"path": str(directory)}
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
        version: int = (await resp.json())["version"]
        return version


async def test_a_redeploy_cancels_the_old_background_profile(
    start: Start, tmp_path: Path
) -> None:
    async with start(profile_on_deploy=True) as daemon:
        profiles = daemon.services.profiles
        assert profiles is not None
        directory = slow_function(tmp_path / "more")
        assert await deploy(daemon, directory) == 1
        await asyncio.sleep(0.3)  # v1's small profile is under way
        assert (await get(daemon, "/system/profile/slow"))[1]["running"] is True
        assert await deploy(daemon, directory) == 2
        # v2's profile starts two sandboxes and calls each: seconds alone, far more on a
        # loaded machine, so the wait is a generous deadline, not a count of polls
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            _, doc = await get(daemon, "/system/profile/slow")
            if doc["configurations"] and not doc["running"]:
                break
            await asyncio.sleep(0.1)
        assert doc["version"] == 2
        # max_batch_size 1: batch 1 at 1 and 2 vCPUs, nothing to fit
        assert [(r["batch"], r["vcpu"], r["source"]) for r in doc["configurations"]] == [
            (1, 1, "measured"), (1, 2, "measured")]
        assert not profiles.store.has_measured("slow", 1)  # cancelled: nothing recorded


async def test_shutdown_ends_a_running_profile(start: Start, tmp_path: Path) -> None:
    slow_function(tmp_path / "functions")  # deployed at start
    async with start() as daemon:
        async with aiohttp.ClientSession() as http, \
                http.post(daemon.url + "/system/profile/slow") as resp:
            assert json.loads(await resp.content.readline())["event"] == "start"
            began = asyncio.get_running_loop().time()
            stopping = asyncio.create_task(daemon.stop())
            lines = [json.loads(line) async for line in resp.content if line.strip()]
            await stopping
        assert lines[-1]["event"] == "error" and lines[-1]["status"] == 503
        assert "shutting down" in lines[-1]["error"]
        assert asyncio.get_running_loop().time() - began < 5  # not the 30 s drain timeout
