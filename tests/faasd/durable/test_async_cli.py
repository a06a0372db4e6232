"""`faasd invoke --async`, `faasd invocations` and `faasd result` against a live daemon."""

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
from tests.faasd.builders import TEXT_HANDLER, make_function

pytestmark = pytest.mark.slow


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    make_function(tmp_path / "functions", "texty", "timeout_s: 5\n", TEXT_HANDLER)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=tmp_path / "functions")
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
    assert header.split()[:3] == ["ID", "FUNCTION", "STATUS"]
    assert {r.split()[0] for r in rows} == {call_id, bug}
    unknown = await _faasd(daemon, "result", "feedface")
    assert unknown.returncode == 1 and "no async call" in unknown.stderr
