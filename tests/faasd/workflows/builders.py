"""Tiny real ONNX functions for workflow tests: element-wise graphs on [N, 4] FP32 tensors.

Each is a function directory a daemon deploys; their arithmetic is simple enough that a test
computes the workflow's answer with numpy and compares it to the daemon's.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_op_model(
    path: Path,
    inputs: list[str],
    output: str,
    op: str,
    const: float | None = None,
    datatype: int = TensorProto.FLOAT,
    width: int = 4,
) -> None:
    """`output = op(*inputs[, const])` over [N, width] tensors (Add, Mul, Sub, Max …)."""
    feeds = [helper.make_tensor_value_info(n, datatype, ["N", width]) for n in inputs]
    result = helper.make_tensor_value_info(output, datatype, ["N", width])
    args = list(inputs)
    weights = []
    if const is not None:
        weights.append(numpy_helper.from_array(np.array(const, dtype=np.float32), "c"))
        args.append("c")
    node = helper.make_node(op, args, [output])
    graph = helper.make_graph([node], op.lower(), feeds, [result], initializer=weights)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def write_picky_model(path: Path, input_name: str = "x", output: str = "y") -> None:
    """y = GatherElements(x, int64(x), axis 1): fine while every value is in 0..3; any other
    value makes onnxruntime fail the run (a stage that fails on what it is given)."""
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("Cast", [input_name], ["idx"], to=TensorProto.INT64),
        helper.make_node("GatherElements", [input_name, "idx"], [output], axis=1),
    ]
    graph = helper.make_graph(nodes, "picky", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def op_function(
    root: Path, name: str, inputs: list[str], output: str, op: str, const: float | None = None,
    yaml: str = "batching: {max_batch_size: 4, max_queue_delay_ms: 1}\n",
    datatype: int = TensorProto.FLOAT,
) -> Path:
    directory = root / name
    write_op_model(directory / "model.onnx", inputs, output, op, const, datatype)
    (directory / "faasd.yaml").write_text(textwrap.dedent(yaml))
    return directory


def workflow_dir(root: Path, name: str, text: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "workflow.yaml").write_text(textwrap.dedent(text))
    return directory


#: the source's handler: a body "1,2,3,4" becomes x; a postprocess that sums (sinks only)
CSV_HANDLER = '''
import numpy as np


def preprocess(body, content_type):
    try:
        values = [float(v) for v in body.decode().split(",")]
    except ValueError:
        raise ValueError("expected four comma-separated numbers") from None
    if len(values) != 4:
        raise ValueError(f"expected four numbers, got {len(values)}")
    return {"x": np.array([values], dtype=np.float32)}
'''

SUM_HANDLER = '''
def postprocess(outputs):
    (name, value), = outputs.items()
    return {"total": float(value.sum()), name: value.tolist()}
'''
