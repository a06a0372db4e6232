"""What a hostile handler sends the daemon, through the real daemon: on its channel, a frame
prefix that claims gigabytes; on its stderr, megabytes without a newline. The sandbox that
breaks the channel's protocol is killed and replaced; the daemon's memory, its log and its
other calls stay as they were."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from faasd.sandbox import lines
from tests.faasd.builders import make_function, started_daemon

pytestmark = pytest.mark.slow

HOSTILE = '''
import os
import struct
import sys

import numpy as np


def _channel():
    """Its end of the channel: the one socket it holds."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                return int(name)
        except OSError:
            pass
    raise RuntimeError("no channel")


def preprocess(body, content_type):
    action, _, arg = body.decode().partition(" ")
    if action == "claim":  # a frame prefix claiming `arg` bytes, and nothing after it
        os.write(_channel(), struct.pack("<II", int(arg), 0))
    elif action == "shout":  # `arg` MiB on stderr, then a newline and a short line
        chunk = b"x" * 2**20
        for _ in range(int(arg)):
            os.write(2, chunk)
        os.write(2, b"\\nafter the flood\\n")
    return {"x": np.zeros((1, 4), dtype=np.float32)}


def postprocess(outputs):
    return {"ok": True}
'''


async def _start(tmp_path: Path, yaml: str = "", **extra: object) -> Daemon:
    functions = tmp_path / "functions"
    make_function(functions, "hostile", yaml, HOSTILE)
    return await started_daemon(tmp_path, functions, **extra)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    running = await _start(tmp_path, "timeout_s: 5\nscale: {max_instances: 1}\n")
    yield running
    await running.stop()


async def _call(daemon: Daemon, body: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.post(
        f"{daemon.url}/function/hostile", data=body.encode(),
        headers={"Content-Type": "text/plain"},
    ) as resp:
        return resp.status, json.loads(await resp.text())


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


async def test_a_frame_over_the_limit_kills_the_sandbox_and_answers_502(
        daemon: Daemon) -> None:
    assert await _call(daemon, "hello") == (200, {"ok": True})
    crashes = daemon.services.pool_stats()["crashes"]
    _reset_peak_rss()
    before = _rss_mb("VmRSS")
    status, doc = await _call(daemon, f"claim {2**31 - 1}")
    grew = _rss_mb("VmHWM") - before  # the daemon is this process
    assert status == 502, doc
    error = str(doc["error"])
    assert f"{2**31 - 1} bytes" in error and "64 MiB" in error and "max_answer_mb" in error
    assert grew < 100, f"the daemon grew by {grew:.0f} MB"
    assert daemon.services.pool_stats()["crashes"] == crashes + 1
    assert await _call(daemon, "hello") == (200, {"ok": True})  # a new sandbox serves


async def test_a_frame_that_claims_more_than_it_sends_costs_what_it_sends(
        tmp_path: Path) -> None:
    """Within the limit (1 GiB here) but never sent: the daemon holds a MiB, not 768, and the
    call runs out its timeout (its sandbox is killed and replaced)."""
    daemon = await _start(tmp_path, "timeout_s: 2\n", max_answer_mb=1024)
    try:
        _reset_peak_rss()
        before = _rss_mb("VmRSS")
        status, doc = await _call(daemon, f"claim {768 * 2**20}")
        grew = _rss_mb("VmHWM") - before
        assert status == 504, doc
        assert grew < 100, f"the daemon grew by {grew:.0f} MB"
        assert await _call(daemon, "hello") == (200, {"ok": True})
    finally:
        await daemon.stop()


def test_the_limit_is_a_setting_of_its_own() -> None:
    assert DaemonConfig().max_answer_bytes == 64 * 2**20
    assert DaemonConfig(max_answer_mb=8).max_answer_bytes == 8 * 2**20
    with pytest.raises(ValueError, match="max_answer_mb must be >= 1"):
        DaemonConfig(max_answer_mb=0).validate()


async def test_megabytes_of_stderr_without_a_newline_make_one_bounded_log_line(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """16 MiB with no newline: logged as one line cut at 64 KiB that says how much was
    dropped, then the next line as usual; the daemon answers /healthz meanwhile."""
    caplog.set_level(logging.INFO, logger="faasd.sandbox")
    flood = asyncio.create_task(_call(daemon, "shout 16"))
    async with aiohttp.ClientSession() as s:
        while not flood.done():
            started = time.perf_counter()
            async with s.get(f"{daemon.url}/healthz") as resp:
                assert resp.status == 200
            assert time.perf_counter() - started < 2.0  # served, not stalled (a busy CI too)
            await asyncio.sleep(0.05)
    assert await flood == (200, {"ok": True})
    for _ in range(100):  # the relay logs what the sandbox wrote as it reads it
        if any("after the flood" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    relayed = [r.getMessage() for r in caplog.records if r.name == "faasd.sandbox"
               and r.getMessage().startswith("hostile v1 [")]
    (cut,) = [m for m in relayed if "xxxx" in m]
    assert len(cut) < lines.MAX_LINE_BYTES + 200
    assert cut.endswith(f"the other {16 * 2**20 - lines.MAX_LINE_BYTES} bytes of it were "
                        "dropped]")
    assert any(m.endswith(": after the flood") for m in relayed)
    assert await _call(daemon, "hello") == (200, {"ok": True})
