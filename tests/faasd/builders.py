"""Builders for the daemon's end-to-end tests: tiny real ONNX functions.

The models are made with `onnx.helper` so these tests do not depend on the example functions;
handlers misbehave on purpose (crash, hang, exhaust memory) to test the sandbox supervision
through HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from faasd.daemon import Daemon

#: y = x @ W for x of shape [N, 4]; W maps 4 features to 3 outputs.
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def write_linear_model(path: Path, batch_dim: int | str = "N", scale: float = 1.0) -> None:
    """A real model: MatMul of a [batch, 4] FP32 input with a constant [4, 3] weight."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3])
    w = numpy_helper.from_array(WEIGHTS * np.float32(scale), name="W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
                              [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_function(root: Path, name: str, yaml: str = "", handler: str | None = None,
                  scale: float = 1.0) -> Path:
    directory = root / name
    write_linear_model(directory / "model.onnx", scale=scale)
    if yaml:
        (directory / "faasd.yaml").write_text(textwrap.dedent(yaml))
    if handler is not None:
        (directory / "handler.py").write_text(textwrap.dedent(handler))
    return directory


#: Reads "a,b,c,d" text; misbehaves on request. Raises ValueError for bad text (a 400).
TEXT_HANDLER = '''
import json
import os
import signal
import time

import numpy as np


def preprocess(body, content_type):
    text = body.decode()
    if text == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if text == "hang":
        time.sleep(3600)
    if text == "oom":
        hog = []
        while True:
            hog.append(np.ones(64 * 1024 * 1024, dtype=np.uint8))
    if text.startswith("sleep:"):
        time.sleep(float(text[6:]))
        text = "1,2,3,4"
    if text == "bug":
        raise KeyError("oops")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"expected four comma-separated numbers, got {text[:40]!r}") from None
    if len(values) != 4:
        raise ValueError(f"expected four numbers, got {len(values)}")
    return {"x": np.array([values], dtype=np.float32)}


def postprocess(outputs):
    y = outputs["y"]
    return {"sum": float(y.sum()), "y": y.tolist()}
'''


def expected_y(x: list[float]) -> list[float]:
    out: list[float] = (np.array([x], dtype=np.float32) @ WEIGHTS)[0].tolist()
    return out


async def invocation_finished(session: Any, url: str, call_id: str) -> dict[str, Any]:
    """Poll `GET /system/invocations/{call_id}` (an aiohttp session) until the call has
    succeeded or failed, for at most 30 s; its record."""
    async with asyncio.timeout(30):
        while True:
            async with session.get(f"{url}/system/invocations/{call_id}") as resp:
                assert resp.status == 200
                doc: dict[str, Any] = await resp.json()
            if doc["status"] in ("succeeded", "failed"):
                return doc
            await asyncio.sleep(0.05)


async def started_daemon(tmp_path: Path, functions_dir: Path, **extra: object) -> Daemon:
    """A daemon in this process on a free port (state under `tmp_path`) that loaded every
    function in `functions_dir`; the caller stops it."""
    from faasd.config import DaemonConfig
    from faasd.daemon import Daemon

    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=functions_dir, **extra)  # type: ignore[arg-type]
    daemon = Daemon(config)
    await daemon.__aenter__()
    assert not daemon.load_errors, daemon.load_errors
    return daemon


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """`app` (an aiohttp Application) served on a free loopback port: its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
