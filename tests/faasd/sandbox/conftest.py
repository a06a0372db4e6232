"""Builders for the sandbox tests: tiny real ONNX models, function directories, a live pool.

The models are built with `onnx.helper`: y = relu(x @ W) with x of shape [N, 16] (or a fixed
[1, 16]). The misbehaving handler crashes, hangs, exhausts memory or raises on request, chosen
by the request body, so one function directory serves every supervision test.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from faasd.functions.spec import FunctionSettings, FunctionVersion
from faasd.sandbox.cgroups import (
    CONTROLLERS,
    Backend,
    group_dir,
    parse_mounts,
    parse_own_groups,
)
from faasd.sandbox.pool import SandboxPool

WEIGHTS = np.random.default_rng(7).standard_normal((16, 16)).astype(np.float32)


def reference_output(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ WEIGHTS, 0)


def write_tiny_model(path: Path, batch_dim: int | str = "N") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 16])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [x],
        [y],
        initializer=[numpy_helper.from_array(WEIGHTS, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


#: Body "1,2,...,16" -> one row; "crash" / "hang" / "oom:<MB>" / "bad" / "bug" misbehave.
MISCHIEF_HANDLER = """
import os
import time

import numpy as np


def preprocess(body, content_type):
    text = body.decode()
    if text == "crash":
        os._exit(3)
    if text == "hang":
        time.sleep(3600)
    if text.startswith("oom:"):
        hog = np.ones(int(text[4:]) * 2**20, dtype=np.uint8)
        return {"x": np.full((1, 16), float(hog[-1]), dtype=np.float32)}
    if text == "bug":
        raise KeyError("oops")
    if text == "shout":
        print("hello from the handler")  # stdout, not flushed: the worker line-buffers
    try:
        values = [float(v) for v in text.split(",")] if text != "shout" else [1.0] * 16
    except ValueError:
        raise ValueError(f"expected 16 comma-separated numbers, got {text[:20]!r}")
    return {"x": np.asarray(values, dtype=np.float64)}   # no batch axis, wrong dtype: conformed


def postprocess(outputs):
    y = outputs["y"]
    return {"sum": float(y.sum()), "rows": int(y.shape[0]), "pid": os.getpid()}
"""


def make_function(
    root: Path,
    name: str = "tiny",
    handler: str | None = None,
    batch_dim: int | str = "N",
) -> Path:
    directory = root / name
    write_tiny_model(directory / "model.onnx", batch_dim)
    if handler is not None:
        (directory / "handler.py").write_text(textwrap.dedent(handler))
    return directory


def make_version(directory: Path, version: int = 1, **settings: Any) -> FunctionVersion:
    handler = directory / "handler.py"
    return FunctionVersion(
        name=directory.name,
        version=version,
        directory=directory,
        model_path=directory / "model.onnx",
        settings=FunctionSettings(**settings),
        handler_path=handler if handler.exists() else None,
    )


def process_exists(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by whoever adopted it) is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_dirs(pid: int, backend: Backend) -> dict[str, Path]:
    """The cgroup directory of `pid` for each controller faasd confines with under `backend`
    (v1: cpu, cpuset, memory; v2: "unified"), found as the daemon finds its own."""
    wanted = CONTROLLERS if backend is Backend.V1 else ("unified",)
    mounts = parse_mounts(Path("/proc/self/mountinfo").read_text())
    groups = parse_own_groups(Path(f"/proc/{pid}/cgroup").read_text())
    return {c: group_dir(mounts[c], groups[c]) for c in wanted}


@pytest.fixture
def cgroup_parent() -> str:
    return f"faasd-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def pool(tmp_path: Path, cgroup_parent: str) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(
        state_dir=tmp_path / "state", cgroup_parent=cgroup_parent, max_sandboxes=8
    ) as live:
        yield live


@pytest.fixture
def function_dir(tmp_path: Path) -> Callable[..., Path]:
    def build(name: str = "tiny", handler: str | None = None, batch_dim: int | str = "N") -> Path:
        return make_function(tmp_path / "functions", name, handler, batch_dim)

    return build
