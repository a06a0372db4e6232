"""Fixtures of the daemon's end-to-end tests: example functions and a live in-process daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import TEXT_HANDLER, make_function


@pytest.fixture
def functions_dir(tmp_path: Path) -> Path:
    root = tmp_path / "functions"
    make_function(root, "linear", "batching: {max_batch_size: 8, max_queue_delay_ms: 2}\n")
    make_function(root, "texty", "timeout_s: 2\nresources: {memory_mb: 300}\n", TEXT_HANDLER)
    return root


@pytest.fixture
async def daemon(tmp_path: Path, functions_dir: Path) -> AsyncIterator[Daemon]:
    config = DaemonConfig(
        host="127.0.0.1",
        port=0,
        state_dir=tmp_path / "state",
        functions_dir=functions_dir,
        max_body_mb=1,
        drain_timeout_s=10,
    )
    async with Daemon(config) as running:
        assert not running.load_errors, running.load_errors
        yield running
