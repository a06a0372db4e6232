"""The gateway's parsing rules: which form a body is, and what a bad tensor is told."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faasd.clock import ManualClock
from faasd.errors import BadRequest, UnsupportedMediaType
from faasd.functions.spec import FunctionSettings, FunctionVersion, ModelInfo, TensorSpec
from faasd.gateway import Gateway, check_tensors, parse_payload
from faasd.metrics import Metrics
from faasd.sandbox.items import BodyItem, TensorItem

INPUTS = (TensorSpec("x", "FP32", (-1, 4)),)


def version(batched: bool = True) -> FunctionVersion:
    return FunctionVersion("f", 1, Path("/f"), Path("/f/model.onnx"), FunctionSettings(),
                           inputs=INPUTS, outputs=(TensorSpec("y", "FP32", (-1, 3)),),
                           batched=batched)


def info(pre: bool) -> ModelInfo:
    return ModelInfo(INPUTS, (), True, has_preprocess=pre, has_postprocess=pre)


V2 = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                             "data": [1, 2, 3, 4]}]}).encode()


@pytest.mark.parametrize("content_type", ["application/json", "",
                                          "application/x-www-form-urlencoded"])
def test_v2_and_plain_json_are_recognised_whatever_the_content_type(content_type: str) -> None:
    payload = parse_payload(version(), info(False), V2, content_type, None)
    assert payload.form == "v2" and payload.request is not None
    plain = parse_payload(version(), info(False), b'{"x": [1, 2, 3, 4]}', content_type, None)
    assert plain.form == "plain"
    assert isinstance(plain.item, TensorItem)
    assert plain.item.tensors["x"].shape == (1, 4)  # the batch dimension was added


def test_handler_functions_get_raw_bodies_unless_the_json_names_inputs() -> None:
    png = parse_payload(version(), info(True), b"\x89PNG\r\n", "image/png", None)
    assert png.form == "body" and png.item == BodyItem(b"\x89PNG\r\n", "image/png")
    custom = parse_payload(version(), info(True), b'{"text": "hi"}', "application/json", None)
    assert custom.form == "body"
    tensors = parse_payload(version(), info(True), b'{"x": [[1, 2, 3, 4]]}', "", None)
    assert tensors.form == "plain"


def test_a_body_no_handler_can_read_is_415_and_v2_path_wants_v2() -> None:
    with pytest.raises(UnsupportedMediaType, match="no handler"):
        parse_payload(version(), info(False), b"\x89PNG", "image/png", None)
    with pytest.raises(BadRequest, match='"inputs" list'):
        parse_payload(version(), info(True), b'{"x": [1, 2, 3, 4]}', "", None, v2_only=True)


def test_binary_and_raw_binary_bodies() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    binary = parse_payload(version(), info(False), header + x.tobytes(), "", len(header))
    assert isinstance(binary.item, TensorItem)
    np.testing.assert_array_equal(binary.item.tensors["x"], x)
    raw = parse_payload(version(), info(False), x.tobytes(), "", 0)
    assert raw.request is not None and raw.request.binary_output
    assert isinstance(raw.item, TensorItem)
    np.testing.assert_array_equal(raw.item.tensors["x"], x)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((1, 3), np.float32)}, "has shape [1, 3]; the model expects [N, 4]"),
        ({"x": np.zeros((1, 4), np.int64)}, "has datatype INT64; the model expects FP32"),
        ({}, "missing input(s) ['x']"),
        ({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)}, "unknown input(s) ['z']"),
    ],
)
def test_tensor_errors_say_what_the_model_expects(arrays: dict[str, np.ndarray],
                                                  fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_tensors(version(), arrays)
    assert fragment in caught.value.message


def test_a_later_stage_queues_from_its_submission_not_from_the_workflow_call_start() -> None:
    """The SLO is end to end (a stage keeps the call's start and deadline), but a stage's
    queue time is its own wait: counting from the call's start would charge every stage with
    its predecessors' execution."""
    clock = ManualClock(10.0)
    gateway = Gateway(controller=None, clock=clock, metrics=Metrics("test"))  # type: ignore[arg-type]
    alone = gateway.new_invocation(version(), TensorItem({}))
    assert alone.start_s == 10.0 and alone.queued_for_s(10.5) == 0.5
    clock.advance(0.25)
    stage = gateway.stage_invocation(version(), TensorItem({}), app="w", request_id=alone.id,
                                     start_s=alone.start_s, deadline_s=alone.deadline_s,
                                     postprocess=False)
    assert stage.start_s == 10.0 and stage.queued_for_s(10.5) == 0.25
