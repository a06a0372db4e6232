"""A batch-mate's input cannot fail innocent calls: when a sandbox dies mid-batch, its calls
are retried in halves on sandboxes of their own, so only the call that kills one fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import TEXT_HANDLER, make_function

BATCHING = "batching: {max_batch_size: 8, max_queue_delay_ms: 300}\nresources: {memory_mb: 300}\n"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    root = tmp_path / "functions"
    make_function(root, "batchy", BATCHING, TEXT_HANDLER)
    make_function(root, "fragile", BATCHING + "idempotent: false\n", TEXT_HANDLER)
    config = DaemonConfig(port=0, state_dir=tmp_path / "state", functions_dir=root,
                          drain_timeout_s=5)
    async with Daemon(config) as running:
        assert not running.load_errors, running.load_errors
        yield running


async def _burst(url: str, poison: str) -> list[int]:
    """Seven good calls and one poisoned one, sent together (one batch: 300 ms to fill)."""
    async with aiohttp.ClientSession() as session:
        async def call(body: str) -> int:
            async with session.post(url, data=body,
                                    headers={"Content-Type": "text/plain"}) as resp:
                await resp.read()
                return resp.status

        return await asyncio.gather(*(call("1,2,3,4") for _ in range(7)), call(poison))


@pytest.mark.parametrize("poison", ["oom", "die"])
async def test_only_the_call_that_kills_the_sandbox_fails(daemon: Daemon, poison: str) -> None:
    statuses = await _burst(f"{daemon.url}/function/batchy", poison)
    assert statuses == [200] * 7 + [502], statuses
    assert daemon.services.pool_stats()["crashes"] >= 2  # the batch's, then the poison's own


async def test_idempotent_false_turns_the_retry_off(daemon: Daemon) -> None:
    statuses = await _burst(f"{daemon.url}/function/fragile", "die")
    assert statuses[-1] == 502
    assert statuses.count(502) > 1, statuses  # its batch-mates went down with it
