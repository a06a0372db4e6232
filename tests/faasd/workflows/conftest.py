"""A live daemon with tiny element-wise functions and workflows over them (see builders)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.workflows.builders import (
    CSV_HANDLER,
    SUM_HANDLER,
    op_function,
    workflow_dir,
    write_picky_model,
)


@pytest.fixture
def functions_dir(tmp_path: Path) -> Path:
    root = tmp_path / "functions"
    src = op_function(root, "src", ["x"], "h", "Mul", 2.0)  # h = 2x
    (src / "handler.py").write_text(CSV_HANDLER)
    op_function(root, "inc", ["h"], "g", "Add", 1.0)  # g = h + 1
    op_function(root, "dbl", ["h"], "k", "Mul", 3.0)  # k = 3h
    join = op_function(root, "join", ["a", "b"], "s", "Add")  # s = a + b
    (join / "handler.py").write_text(SUM_HANDLER)
    half = op_function(root, "half", ["g"], "out", "Mul", 0.5)  # out = g / 2
    (half / "handler.py").write_text(SUM_HANDLER)
    picky = root / "picky"
    write_picky_model(picky / "model.onnx", "h", "g")  # fails unless every h is in 0..3
    return root


@pytest.fixture
def workflows_dir(tmp_path: Path) -> Path:
    root = tmp_path / "workflows"
    workflow_dir(root, "chain", """
        slo_ms: 5000
        functions: [src, inc, half]
        edges:
          - {from: src, to: inc}
          - {from: inc, to: half}
    """)
    workflow_dir(root, "forkjoin", """
        slo_ms: 5000
        functions: [src, inc, dbl, join]
        edges:
          - {from: src, to: inc}
          - {from: src, to: dbl}
          - {from: inc, to: join, map: {g: a}}
          - {from: dbl, to: join, map: {k: b}}
    """)
    workflow_dir(root, "diamond", """
        slo_ms: 5000
        functions: [src, inc, join]
        edges:
          - {from: src, to: inc}
          - {from: inc, to: join, map: {g: a}}
          - {from: src, to: join, map: {h: b}}
    """)
    workflow_dir(root, "twosinks", """
        slo_ms: 5000
        functions: [src, inc, dbl]
        edges: [{from: src, to: inc}, {from: src, to: dbl}]
    """)
    workflow_dir(root, "fragile", """
        slo_ms: 5000
        functions: [src, picky, half]
        edges: [{from: src, to: picky}, {from: picky, to: half}]
    """)
    return root


def daemon_config(tmp_path: Path, functions_dir: Path, workflows_dir: Path | None,
                  scheduler: str = "fcfs") -> DaemonConfig:
    return DaemonConfig(
        host="127.0.0.1",
        port=0,
        state_dir=tmp_path / "state",
        functions_dir=functions_dir,
        workflows_dir=workflows_dir,
        scheduler=scheduler,
        drain_timeout_s=10,
    )


@pytest.fixture
async def daemon(tmp_path: Path, functions_dir: Path, workflows_dir: Path) -> AsyncIterator[Daemon]:
    async with Daemon(daemon_config(tmp_path, functions_dir, workflows_dir)) as running:
        assert not running.load_errors, running.load_errors
        yield running
