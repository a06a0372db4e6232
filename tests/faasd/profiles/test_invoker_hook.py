"""The invoker's `on_batch` hook, with a real pool: what it hears, and that it cannot fail
a call."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from esg.model import Config
from faasd.functions.spec import FunctionVersion
from faasd.gateway import CallResult, Invocation
from faasd.invoker import Invoker
from faasd.metrics import Metrics
from faasd.sandbox.items import Execution, TensorItem
from faasd.sandbox.pool import SandboxPool

from .conftest import linear_function, loaded


def calls(version: FunctionVersion, n: int) -> list[Invocation]:
    item = TensorItem({"x": np.ones((1, 4), dtype=np.float32)})
    return [Invocation(f"c{i}", version.name, version, item, 0.0, float("inf"))
            for i in range(n)]


async def test_on_batch_hears_every_run_and_its_errors_stay_in_the_log(
    pool: SandboxPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version, _ = await loaded(pool, linear_function(tmp_path / "functions"))
    heard: list[tuple[int, Config, int, bool]] = []

    def observe(v: FunctionVersion, config: Config, execution: Execution) -> None:
        heard.append((v.version, config, len(execution.results), execution.cold_start))
        if len(heard) == 2:
            raise RuntimeError("a broken observer")

    invoker = Invoker(pool, Metrics("test"), on_batch=observe)
    config = Config(4, 1)
    first = await invoker.execute(config, calls(version, 3), 0.0)
    with caplog.at_level(logging.ERROR, logger="faasd.invoker"):
        second = await invoker.execute(config, calls(version, 2), 0.0)
    assert heard == [(1, config, 3, True), (1, config, 2, False)]
    assert first.ok and second.ok
    assert all(isinstance(r, CallResult) for r in [*first.results, *second.results])
    assert "observing a batch of lin failed" in caplog.text
