"""Fixtures of the profile tests: a live sandbox pool and tiny real functions with samples."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd.functions.spec import FunctionSettings, FunctionVersion, ModelInfo
from faasd.sandbox.pool import SandboxPool
from tests.faasd.builders import make_function

#: A plain-tensor sample for the builders' linear model (y = x @ W, x of shape [N, 4]).
SAMPLE = '{"x": [[1, 2, 3, 4]]}\n'


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(state_dir=tmp_path / "state",
                           cgroup_parent=f"faasd-test-{uuid.uuid4().hex[:8]}",
                           max_sandboxes=8) as live:
        yield live


def linear_function(root: Path, name: str = "lin", sample: str | None = SAMPLE,
                    handler: str | None = None) -> Path:
    directory = make_function(root, name, handler=handler)
    if sample is not None:
        (directory / "sample.json").write_text(sample)
    return directory


async def loaded(pool: SandboxPool, directory: Path, max_batch_size: int = 4,
                 version: int = 1) -> tuple[FunctionVersion, ModelInfo]:
    """The directory as a deployed version, with what loading it in a sandbox revealed."""
    handler = directory / "handler.py"
    bare = FunctionVersion(
        name=directory.name, version=version, directory=directory,
        model_path=directory / "model.onnx",
        settings=FunctionSettings(max_batch_size=max_batch_size, max_instances=2),
        handler_path=handler if handler.exists() else None,
    )
    info = await pool.inspect(bare)
    full = dataclasses.replace(bare, inputs=info.inputs, outputs=info.outputs,
                               batched=info.batched, has_preprocess=info.has_preprocess,
                               has_postprocess=info.has_postprocess)
    return full, info
