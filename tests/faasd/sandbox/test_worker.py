"""What a worker does to itself before the function runs, seen from outside in /proc."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from esg.model import Config
from faasd.sandbox.items import BodyItem
from faasd.sandbox.pool import SandboxPool
from faasd.sandbox.worker import OOM_SCORE_ADJ

from .conftest import MISCHIEF_HANDLER, make_version

pytestmark = pytest.mark.slow


def _oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


async def test_a_sandbox_is_the_first_to_go_when_memory_runs_out(
        pool: SandboxPool, function_dir: Callable[..., Path]) -> None:
    version = make_version(function_dir(handler=MISCHIEF_HANDLER))
    body = BodyItem(",".join(["1"] * 16).encode(), "text/plain")
    execution = await pool.run(version, Config(1, 1), [body])
    assert _oom_score_adj(execution.sandbox_pid) == OOM_SCORE_ADJ == 1000
    # the daemon (this process) and its fork servers keep theirs
    daemon = _oom_score_adj(os.getpid())
    assert daemon < OOM_SCORE_ADJ
    assert all(_oom_score_adj(pid) == daemon for pid in pool.fork_server_pids)
