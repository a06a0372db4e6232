"""faasd.workflows.reference: reading workflow.yaml, the order, which output feeds which input
(the contract's edges and maps), and a run with two sinks over tiny models. The examples run
end to end in tests/functions/test_workflows.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from faasd.workflows.reference import (
    Edge,
    WorkflowDefinition,
    WorkflowError,
    parse_workflow,
    run_directly,
    sinks_of,
    source_of,
    stage_feeds,
    topological_order,
)

CONTRACT = """
slo_ms: 150
functions: [pre, net, post]
edges:
  - {from: pre, to: net}
  - {from: net, to: post, map: {prob: x}}
"""


def definition(functions: str, *edges: Edge) -> WorkflowDefinition:
    return WorkflowDefinition(100.0, tuple(functions.split()), edges)


def test_the_contracts_example_reads_as_written() -> None:
    parsed = parse_workflow(CONTRACT)
    assert parsed == WorkflowDefinition(
        150.0, ("pre", "net", "post"),
        (Edge("pre", "net"), Edge("net", "post", (("prob", "x"),))),
    )
    assert topological_order(parsed) == ["pre", "net", "post"]
    assert source_of(parsed) == "pre" and sinks_of(parsed) == ["post"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("functions: [a]\n", "slo_ms must be a positive number"),
        ("slo_ms: 0\nfunctions: [a]\n", "slo_ms must be a positive number"),
        ("slo_ms: true\nfunctions: [a]\n", "slo_ms must be a positive number"),
        ("slo_ms: 10\n", "functions must be a list"),
        ("slo_ms: 10\nfunctions: [a, a]\n", "lists a name twice"),
        ("slo_ms: 10\nfunctions: [a]\nedges: [{from: a}]\n", r"edges\[0\] must be"),
        ("slo_ms: 10\nfunctions: [a, b]\nedges: [{from: a, to: b, map: [x]}]\n",
         "map must name output: input pairs"),
        ("slo_ms: 10\nfunctions: [a]\nedges: [{from: a, to: zz}]\n",
         "'zz', which is not in functions"),
        ("slo_ms: [10\n", "not valid YAML"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_workflow_yaml_says_what_to_change(text: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        parse_workflow(text, "w/workflow.yaml")


def test_order_puts_every_function_after_its_predecessors() -> None:
    # A diamond listed sink-first: pre -> (seg, direct) -> comp.
    diamond = definition("comp seg pre", Edge("pre", "seg"), Edge("pre", "comp"),
                         Edge("seg", "comp"))
    assert topological_order(diamond) == ["pre", "seg", "comp"]
    fork = definition("pre a b vote", Edge("pre", "a"), Edge("pre", "b"), Edge("a", "vote"),
                      Edge("b", "vote"))
    assert topological_order(fork) == ["pre", "a", "b", "vote"]


def test_a_cycle_and_two_sources_are_errors() -> None:
    cycle = definition("a b c", Edge("a", "b"), Edge("b", "c"), Edge("c", "b"))
    with pytest.raises(WorkflowError, match="cycle through b, c"):
        topological_order(cycle)
    with pytest.raises(WorkflowError, match="a, b have no predecessor"):
        source_of(definition("a b c", Edge("a", "c"), Edge("b", "c")))


def test_feeds_follow_edges_and_maps() -> None:
    prob, other, image = (np.full((1, 2), v, dtype=np.float32) for v in (1, 2, 3))
    produced = {"pre": {"image": image}, "net": {"prob": prob, "other": other}}
    workflow = definition("pre net post", Edge("pre", "net"),
                          Edge("net", "post", (("prob", "x"),)),
                          Edge("pre", "post", (("image", "picture"),)))
    # Single output -> single input: the names need not match.
    assert stage_feeds(workflow, "net", ["data"], produced) == {"data": image}
    # A join: each input from the edge whose map names it; unmapped outputs are dropped.
    feeds = stage_feeds(workflow, "post", ["x", "picture"], produced)
    assert feeds.keys() == {"x", "picture"}
    assert feeds["x"] is prob and feeds["picture"] is image


@pytest.mark.parametrize(
    ("edges", "inputs", "message"),
    [
        ((Edge("net", "post"),), ["x"], r"no map, but net has outputs \['other', 'prob'\]"),
        ((Edge("net", "post", (("probs", "x"),)),), ["x"], "net has no output 'probs'"),
        ((Edge("net", "post", (("prob", "y"),)),), ["x"], "post has no input 'y'"),
        ((Edge("net", "post", (("prob", "x"),)), Edge("pre", "post", (("image", "x"),))),
         ["x"], "input 'x' of post is fed twice"),
        ((Edge("net", "post", (("prob", "x"),)),), ["x", "z"], "no edge feeds input z"),
    ],
)
def test_feeds_that_do_not_fit_are_errors(
    edges: tuple[Edge, ...], inputs: list[str], message: str
) -> None:
    produced = {"pre": {"image": np.zeros(1)}, "net": {"prob": np.zeros(1), "other": np.zeros(1)}}
    with pytest.raises(WorkflowError, match=message):
        stage_feeds(definition("pre net post", *edges), "post", inputs, produced)


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


def test_two_sinks_answer_an_object_keyed_by_function(tmp_path: Path) -> None:
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
