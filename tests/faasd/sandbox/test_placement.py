"""Where sandboxes run: spread over the node's CPUs, also when they start side by side."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from esg.model import Config
from faasd.sandbox.items import TensorItem
from faasd.sandbox.pool import SandboxPool

from .conftest import make_version

pytestmark = pytest.mark.slow


async def test_sandboxes_started_side_by_side_get_different_cpus(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    version = make_version(function_dir(), max_batch_size=1, max_instances=2)
    x = np.ones((1, 16), dtype=np.float32)
    first, second = await asyncio.gather(
        pool.run(version, Config(1, 1), [TensorItem({"x": x})]),
        pool.run(version, Config(1, 1), [TensorItem({"x": x})]),
    )
    assert first.cold_start and second.cold_start
    assert first.sandbox_pid != second.sandbox_pid
    cpus = [os.sched_getaffinity(e.sandbox_pid) for e in (first, second)]
    assert all(len(c) == 1 for c in cpus) and cpus[0] != cpus[1], cpus
