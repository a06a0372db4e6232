"""`faasd invoke --async`, `faasd invocations` and `faasd result` against a live daemon, for
functions and workflows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import TEXT_HANDLER, expected_y, make_function
from tests.faasd.workflows.builders import workflow_dir, write_op_model

pytestmark = pytest.mark.slow


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    make_function(tmp_path / "functions", "texty", "timeout_s: 5\n", TEXT_HANDLER)
    write_op_model(tmp_path / "functions" / "incy" / "model.onnx", ["y"], "z", "Add", 1.0,
                   width=3)
    workflow_dir(tmp_path / "workflows", "pair", """
        slo_ms: 5000
        functions: [texty, incy]
        edges: [{from: texty, to: incy}]
    """)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=tmp_path / "functions",
                          workflows_dir=tmp_path / "workflows")
    async with Daemon(config) as running:
        yield running


async def _faasd(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    command, rest = args[0], list(args[1:])
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAASD_")}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "faasd.cli", command, "-g", daemon.url, *rest],
        capture_output=True, text=True, timeout=60, env=env)


async def test_async_from_the_cli(daemon: Daemon) -> None:
    sent = await _faasd(daemon, "invoke", "texty", "--async", "-d", "1,2,3,4",
                        "--content-type", "text/plain")
    assert sent.returncode == 0, sent.stderr
    call_id = sent.stdout.strip()
    for _ in range(200):
        got = await _faasd(daemon, "result", call_id)
        if got.returncode == 0:
            break
        assert "not finished yet" in got.stderr
        await asyncio.sleep(0.05)
    assert json.loads(got.stdout)["y"]
    record = json.loads((await _faasd(daemon, "result", call_id, "-o", "json")).stdout)
    assert record["status"] == "succeeded" and record["id"] == call_id

    bug = (await _faasd(daemon, "invoke", "texty", "--async", "-d", "bug",
                        "--content-type", "text/plain")).stdout.strip()
    for _ in range(200):
        failed = await _faasd(daemon, "result", bug)
        if "not finished yet" not in failed.stderr:
            break
        await asyncio.sleep(0.05)
    assert failed.returncode == 1 and "KeyError" in failed.stderr and bug in failed.stderr

    listed = await _faasd(daemon, "invocations", "texty")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "KIND", "STATUS"]
    assert {tuple(r.split()[:3]) for r in rows} == {(call_id, "texty", "function"),
                                                    (bug, "texty", "function")}
    unknown = await _faasd(daemon, "result", "feedface")
    assert unknown.returncode == 1 and "no async call" in unknown.stderr


async def test_async_workflow_calls_from_the_cli(daemon: Daemon) -> None:
    sent = await _faasd(daemon, "invoke", "pair", "--async", "-d", "1,2,3,4",
                        "--content-type", "text/plain")
    assert sent.returncode == 0, sent.stderr
    call_id = sent.stdout.strip()
    got = await _faasd(daemon, "result", call_id, "--wait")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["z"][0] == pytest.approx(
        [y + 1 for y in expected_y([1, 2, 3, 4])], rel=1e-5)  # texty then incy: x @ W + 1
    function_call = (await _faasd(daemon, "invoke", "texty", "--async", "-d", "1,2,3,4",
                                  "--content-type", "text/plain")).stdout.strip()

    listed = await _faasd(daemon, "invocations", "pair")
    assert listed.returncode == 0, listed.stderr
    _, *rows = listed.stdout.splitlines()
    assert [r.split()[:4] for r in rows] == [[call_id, "pair", "workflow", "succeeded"]]
    everything = (await _faasd(daemon, "invocations")).stdout.splitlines()[1:]
    assert {r.split()[0]: r.split()[2] for r in everything} == {
        call_id: "workflow", function_call: "function"}
    unknown = await _faasd(daemon, "invoke", "nosuch", "--async", "-d", "1,2,3,4")
    assert unknown.returncode == 1 and "no function or workflow named 'nosuch'" in unknown.stderr
