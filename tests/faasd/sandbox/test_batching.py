"""A batch inside a worker, run in-process: stacking, splitting, and failures kept per item."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from faasd.runtime.onnx import OnnxModel
from faasd.sandbox.batching import Handler, execute, run_batch, serialise
from faasd.sandbox.items import BodyItem, BodyResult, ItemFailure, TensorItem, TensorResult

from .conftest import reference_output, write_tiny_model


class CountingModel:
    """The real model, counting session runs (to tell one stacked run from several)."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.runs = 0

    @property
    def inputs(self):  # type: ignore[no-untyped-def]
        return self.model.inputs

    @property
    def batched(self) -> bool:
        return self.model.batched

    def run(self, feeds):  # type: ignore[no-untyped-def]
        self.runs += 1
        return self.model.run(feeds)


@pytest.fixture
def model(tmp_path: Path) -> CountingModel:
    return CountingModel(OnnxModel.load(write_tiny_model(tmp_path / "model.onnx")))


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_items_run_as_one_stacked_batch_and_split_back_like_onnxruntime(
    model: CountingModel, tmp_path: Path
) -> None:
    inputs = [rows(1, 1), rows(3, 2), rows(2, 3)]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    results = execute(model, Handler(), [TensorItem({"x": x}) for x in inputs])
    assert model.runs == 1
    for x, result in zip(inputs, results, strict=True):
        assert isinstance(result, TensorResult)
        expected = session.run(["y"], {"x": x})[0]
        assert result.tensors["y"].shape == (x.shape[0], 16)
        np.testing.assert_allclose(result.tensors["y"], expected, rtol=1e-5, atol=1e-5)


def test_a_bad_item_fails_alone_with_onnxruntimes_message(model: CountingModel) -> None:
    good, bad = rows(2, 1), rows(1, 2)[:, :8]  # 8 features where the model takes 16
    results = execute(model, Handler(), [TensorItem({"x": good}), TensorItem({"x": bad})])
    assert isinstance(results[0], TensorResult)
    np.testing.assert_allclose(
        results[0].tensors["y"], reference_output(good), rtol=1e-5, atol=1e-5
    )
    assert isinstance(results[1], ItemFailure)
    assert results[1].status == 400
    assert "x" in results[1].message and "dimension" in results[1].message.lower()


def test_wrong_dtype_inside_a_batch_fails_only_that_item(model: CountingModel) -> None:
    results = execute(
        model,
        Handler(),
        [TensorItem({"x": rows(1, 1).astype(np.float64)}), TensorItem({"x": rows(1, 2)})],
    )
    assert isinstance(results[0], ItemFailure) and results[0].status == 400
    assert "double" in results[0].message or "float" in results[0].message
    assert isinstance(results[1], TensorResult)


def test_fixed_batch_model_runs_items_one_by_one(tmp_path: Path) -> None:
    fixed = CountingModel(OnnxModel.load(write_tiny_model(tmp_path / "fixed.onnx", batch_dim=1)))
    assert not fixed.batched
    outputs = run_batch(fixed, [{"x": rows(1, 1)}, {"x": rows(1, 2)}])
    assert fixed.runs == 2
    np.testing.assert_allclose(outputs[1]["y"], reference_output(rows(1, 2)), rtol=1e-5, atol=1e-5)  # type: ignore[index]


def _echo_handler(fail: BaseException | None = None) -> Handler:
    def preprocess(body: bytes, content_type: str) -> dict[str, np.ndarray]:
        if fail is not None:
            raise fail
        return {"x": np.asarray([float(v) for v in body.split(b",")])}  # 1-d float64

    def postprocess(outputs: dict[str, np.ndarray]) -> object:
        return {"y": outputs["y"], "first": outputs["y"][0, 0]}

    return Handler(preprocess, postprocess)


def test_body_items_are_preprocessed_conformed_batched_and_postprocessed(
    model: CountingModel,
) -> None:
    body = ",".join(["0.5"] * 16).encode()
    x = rows(2, 4)
    results = execute(
        model,
        _echo_handler(),
        [BodyItem(body, "text/csv"), TensorItem({"x": x}), BodyItem(body, "text/csv")],
    )
    assert model.runs == 1  # the float64 1-d body became a float32 row and stacked with the rest
    assert all(isinstance(r, BodyResult) and r.content_type == "application/json" for r in results)
    decoded = [json.loads(r.body) for r in results if isinstance(r, BodyResult)]
    expected = reference_output(np.full((1, 16), 0.5, dtype=np.float32))
    np.testing.assert_allclose(decoded[0]["y"], expected, rtol=1e-5, atol=1e-5)
    assert len(decoded[1]["y"]) == 2
    assert decoded[0]["first"] == pytest.approx(float(expected[0, 0]), rel=1e-5)


def test_without_postprocess_the_model_tensors_come_back_even_with_a_handler(
    model: CountingModel,
) -> None:
    x = rows(3, 5)
    results = execute(model, _echo_handler(), [TensorItem({"x": x[:1]}), TensorItem({"x": x[1:]})],
                      postprocess=False)
    assert model.runs == 1
    assert all(isinstance(r, TensorResult) for r in results)
    tensors = [r.tensors for r in results if isinstance(r, TensorResult)]
    assert sorted(tensors[0]) == ["y"]  # the model's outputs, not the handler's {"y", "first"}
    np.testing.assert_allclose(np.concatenate([t["y"] for t in tensors]), reference_output(x),
                               rtol=1e-5, atol=1e-5)
    # the handler still answers when asked (the OpenFaaS path)
    [answer] = execute(model, _echo_handler(), [TensorItem({"x": x[:1]})])
    assert isinstance(answer, BodyResult) and "first" in json.loads(answer.body)


@pytest.mark.parametrize(
    ("error", "status", "fragment"),
    [
        (ValueError("not an image"), 400, "not an image"),
        (KeyError("label"), 502, "handler raised KeyError"),
    ],
)
def test_handler_errors_become_item_failures(
    model: CountingModel, error: Exception, status: int, fragment: str
) -> None:
    results = execute(
        model, _echo_handler(error), [BodyItem(b"x", "text/plain"), TensorItem({"x": rows(1, 1)})]
    )
    assert isinstance(results[0], ItemFailure)
    assert results[0].status == status and fragment in results[0].message
    assert isinstance(results[1], BodyResult)


def test_body_without_preprocess_is_refused(model: CountingModel) -> None:
    [result] = execute(model, Handler(), [BodyItem(b"png", "image/png")])
    assert isinstance(result, ItemFailure) and result.status == 400
    assert "preprocess" in result.message
    assert model.runs == 0


def test_memory_error_in_a_handler_is_not_swallowed(model: CountingModel) -> None:
    with pytest.raises(MemoryError):
        execute(model, _echo_handler(MemoryError()), [BodyItem(b"x", "text/plain")])


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        ({"a": np.float32(1.5)}, "application/json"),
        ([1, 2], "application/json"),
        ("ok", "text/plain; charset=utf-8"),
        (b"\x89PNG", "application/octet-stream"),
    ],
)
def test_postprocess_values_are_serialised_by_type(value: object, content_type: str) -> None:
    result = serialise(value)
    assert isinstance(result, BodyResult) and result.content_type == content_type


def test_unserialisable_postprocess_value_is_a_handler_bug() -> None:
    assert serialise(3.5) == ItemFailure(
        502, "postprocess returned float; return a dict, list, str or bytes"
    )
    failure = serialise({"x": object()})
    assert isinstance(failure, ItemFailure) and failure.status == 502
