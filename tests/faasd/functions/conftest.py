"""Builders for the function-directory tests: a tiny real ONNX model and directories around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from faasd.functions.spec import FunctionSettings

DEFAULTS = FunctionSettings()


def write_model(path: Path, batch_dim: int | str = "N") -> Path:
    """y = relu(x @ W), x [batch_dim, 4] FP32: a real model, a few hundred bytes."""
    weights = np.arange(16, dtype=np.float32).reshape(4, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 4])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_function(root: Path, name: str = "tiny", files: dict[str, str] | None = None,
                  model: str | None = "model.onnx") -> Path:
    """A function directory `root/name` with a model at `model` (None: no model) and `files`."""
    directory = root / name
    directory.mkdir(parents=True)
    if model is not None:
        write_model(directory / model)
    for relative, text in (files or {}).items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    return root
