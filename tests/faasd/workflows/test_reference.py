"""faasd.workflows.reference: the order it runs stages in, and runs of the tiny workflows of
this package's conftest (chain, fork-join, diamond, two sinks) checked against numpy. The
examples under workflows/ run in tests/functions/test_workflows.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from faasd.workflows.reference import WorkflowError, run_directly, topological_order
from faasd.workflows.spec import WorkflowSpecError, parse_spec

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
H = 2 * X  # src: h = 2x


def test_order_puts_every_function_after_its_predecessors() -> None:
    # A diamond listed sink-first: pre -> (seg, direct) -> comp.
    diamond = parse_spec({"slo_ms": 10, "functions": ["comp", "seg", "pre"],
                          "edges": [{"from": "pre", "to": "seg"}, {"from": "pre", "to": "comp"},
                                    {"from": "seg", "to": "comp"}]}, "d")
    assert topological_order(diamond) == ["pre", "seg", "comp"]
    fork = parse_spec({"slo_ms": 10, "functions": ["pre", "a", "b", "vote"],
                       "edges": [{"from": "pre", "to": "a"}, {"from": "pre", "to": "b"},
                                 {"from": "a", "to": "vote"}, {"from": "b", "to": "vote"}]}, "f")
    assert topological_order(fork) == ["pre", "a", "b", "vote"]


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        ("chain", {"out": (H + 1) * 0.5}),  # src -> inc -> half (SUM_HANDLER)
        ("forkjoin", {"s": (H + 1) + 3 * H}),  # join: a = inc's g, b = dbl's k
        ("diamond", {"s": (H + 1) + H}),  # join: a = inc's g, b = src's h itself
    ],
)
def test_the_tiny_workflows_compose_as_numpy_does(
    functions_dir: Path, workflows_dir: Path, workflow: str, expected: dict[str, np.ndarray]
) -> None:
    result = run_directly(workflows_dir / workflow, b"1,2,3,4", content_type="text/csv",
                          functions_dir=functions_dir)
    ((name, value),) = expected.items()
    np.testing.assert_allclose(result.answer[name], value, rtol=1e-6)
    assert result.answer["total"] == pytest.approx(float(value.sum()))
    np.testing.assert_allclose(result.tensors["src"]["h"], H)
    # Tensors for the source skip its preprocess, as POST /workflow takes them too.
    again = run_directly(workflows_dir / workflow, {"x": X}, functions_dir=functions_dir)
    assert again.answer == result.answer


def test_two_sinks_without_postprocess_answer_their_tensors(
    functions_dir: Path, workflows_dir: Path
) -> None:
    result = run_directly(workflows_dir / "twosinks", b"1,2,3,4", functions_dir=functions_dir)
    assert result.answer == {"inc": {"g": (H + 1).tolist()}, "dbl": {"k": (3 * H).tolist()}}
    assert result.outputs.keys() == {"inc", "dbl"}


def test_a_workflow_the_daemon_refuses_is_refused_alike(
    functions_dir: Path, workflows_dir: Path
) -> None:
    (workflows_dir / "forkjoin" / "workflow.yaml").write_text(
        "slo_ms: 10\nfunctions: [src, inc, dbl, join]\nedges:\n"
        "  - {from: src, to: inc}\n  - {from: src, to: dbl}\n"
        "  - {from: inc, to: join, map: {g: a}}\n  - {from: dbl, to: join, map: {k: c}}\n")
    with pytest.raises(WorkflowSpecError, match=r"edges\[3\]\.map names input 'c'"):
        run_directly(workflows_dir / "forkjoin", b"1,2,3,4", functions_dir=functions_dir)


def tiny_function(directory: Path, op: str, handler: str = "") -> None:
    """A function whose model computes out = op(x) on FP32 [N, 2] (Neg, Abs, Relu, ...)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["out"])], op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"))
    if handler:
        (directory / "handler.py").write_text(handler)


def test_a_batch_over_two_sinks_answers_row_by_row_keyed_by_function(tmp_path: Path) -> None:
    """neg -> {abs, relu}: relu has no postprocess (its tensors come back as a JSON object),
    abs has one; a function of functions/ is used when the workflow has no such stage."""
    workflow, shared = tmp_path / "workflows" / "fork", tmp_path / "functions"
    tiny_function(shared / "neg", "Neg")
    tiny_function(workflow / "abs", "Abs",
                  "def postprocess(outputs):\n    return {'sum': float(outputs['out'].sum())}\n")
    tiny_function(workflow / "relu", "Relu")
    (workflow / "workflow.yaml").write_text(
        "slo_ms: 10\nfunctions: [neg, abs, relu]\n"
        "edges: [{from: neg, to: abs}, {from: neg, to: relu}]\n")
    x = np.array([[1.0, -2.0], [3.0, 4.0]], dtype=np.float32)
    result = run_directly(workflow, {"x": x})  # functions/ beside workflows/ by default
    assert result.answers == (
        {"abs": {"sum": 3.0}, "relu": {"out": [[0.0, 2.0]]}},
        {"abs": {"sum": 7.0}, "relu": {"out": [[0.0, 0.0]]}},
    )
    np.testing.assert_array_equal(result.tensors["neg"]["out"], -x)
    assert result.outputs.keys() == {"abs", "relu"}
    with pytest.raises(ValueError, match="2 batch rows"):
        _ = result.answer
    with pytest.raises(WorkflowError, match=r"neg has no preprocess\(\); pass its inputs \(x\)"):
        run_directly(workflow, b"a body")
    (workflow / "workflow.yaml").write_text("slo_ms: 10\nfunctions: [neg, nope]\n"
                                           "edges: [{from: neg, to: nope}]\n")
    with pytest.raises(WorkflowError, match="function 'nope' is neither"):
        run_directly(workflow, {"x": x})
