"""functions/build_models.py: a digits classifier that is really good, ImageNet architectures
whose batch dimension is really dynamic, and a build that skips what is up to date."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from .conftest import EXAMPLES, FUNCTIONS


def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light model with its constant weights replaced by random ones (He-scaled), so that
    different pictures give different answers and a batch that mixed items up would show."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # BatchNormalization's scale, bias, mean, variance: kept valid (variance > 0).
    batch_norm = {name: index for node in graph.node if node.op_type == "BatchNormalization"
                  for index, name in enumerate(node.input) if index}
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        scale = np.sqrt(2.0 / fan_in) if fan_in else 0.1
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        role = batch_norm.get(node.output[0])
        if role in (1, 4):  # scale, variance
            values = (1.0 + 0.1 * rng.random(shape)).astype(np.float32)
        elif role == 3:  # mean
            values = np.zeros(shape, dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    return model


def outputs_of(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return result


@pytest.mark.slow
def test_digits_classifier_is_right_95_percent_of_held_out_digits(
    build_models: ModuleType,
) -> None:
    data = build_models.digits_data()
    assert (len(data.train_x), len(data.test_x)) == (1347, 450)
    handler = build_models.load_module(FUNCTIONS / "digits" / "handler.py", "digits_h")
    classifier = build_models.train_digits(data, handler)
    model = build_models.digits_graph(classifier)
    # The hand-written graph computes what scikit-learn computes...
    np.testing.assert_allclose(outputs_of(model, data.test_x),
                               classifier.predict_proba(data.test_x / 16.0), rtol=1e-4, atol=1e-5)
    # ...and it is right on digits it never saw.
    assert build_models.accuracy(model, data.test_x, data.test_y) >= 0.95


def test_built_digits_model(build_models: ModuleType, models: Path) -> None:
    data = build_models.digits_data()
    path = models / "digits" / "model.onnx"
    assert build_models.accuracy(path, data.test_x, data.test_y) >= 0.95
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    assert (feed.name, feed.shape, feed.type) == ("input", ["N", 64], "tensor(float)")
    probabilities = session.run(None, {"input": data.test_x[:5]})[0]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_dynamic_batch_squeezenet_equals_per_item_runs(build_models: ModuleType) -> None:
    light = onnx.load(str(build_models.LIGHT_MODELS / "light_squeezenet.onnx"))
    model = build_models.make_batch_dynamic(randomized(light))
    x = np.random.default_rng(1).standard_normal((4, 3, 224, 224), dtype=np.float32)
    together = outputs_of(model, x)
    alone = np.concatenate([outputs_of(model, x[i : i + 1]) for i in range(4)])
    assert together.shape == (4, 1000, 1, 1)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-7)
    # The check has teeth: different pictures give different answers.
    assert np.abs(together[0] - together[1]).max() > 1e-4
    build_models.check_batch_dynamic(model)
    # And the rewrite was needed: the original takes a batch of 1 only.
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        outputs_of(randomized(light), x)


@pytest.mark.slow
def test_dynamic_batch_resnet50_fixes_its_reshape(build_models: ModuleType) -> None:
    light = onnx.load(str(build_models.LIGHT_MODELS / "light_resnet50.onnx"))
    model = build_models.make_batch_dynamic(randomized(light))
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    shape = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}[reshape.input[1]]
    assert shape.tolist() == [0, 2048]  # was [1, 2048]: batch 1 hard-coded
    # Compare the logits (random weights saturate the softmax): the Gemm after the Reshape.
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        gemm.output[0], onnx.TensorProto.FLOAT, ["N", 1000]))
    x = np.random.default_rng(2).standard_normal((3, 3, 224, 224), dtype=np.float32)
    together = outputs_of(model, x)
    alone = np.concatenate([outputs_of(model, x[i : i + 1]) for i in range(3)])
    assert together.shape == (3, 1000)
    np.testing.assert_allclose(together, alone, rtol=1e-3, atol=1e-5 * np.abs(alone).max())
    assert np.abs(together[0] - together[2]).max() > 1e-3 * np.abs(alone).max()


@pytest.mark.parametrize(("name", "output"), [("squeezenet", "softmaxout_1"),
                                              ("resnet50", "softmax_1")])
def test_built_imagenet_models_take_any_batch(
    build_models: ModuleType, models: Path, name: str, output: str
) -> None:
    path = models / name / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    weights = {t.name for t in model.graph.initializer}
    assert [i.name for i in model.graph.input if i.name not in weights] == ["data_0"]
    assert [i.name for i in model.graph.input] == ["data_0"]  # weights are not inputs
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert [o.name for o in model.graph.output] == [output]
    build_models.check_batch_dynamic(model, batch=3)


def test_build_is_idempotent_and_force_rebuilds(
    build_models: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_models.main(["--out", str(tmp_path), "squeezenet"]) == 0
    target = tmp_path / "squeezenet" / "model.onnx"
    first = target.stat().st_mtime_ns, target.stat().st_ino
    assert "checking batch 4" in capsys.readouterr().out
    assert build_models.main(["--out", str(tmp_path), "squeezenet"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == first
    target.write_bytes(b"corrupt")  # a damaged model is rebuilt, not trusted
    assert build_models.main(["--out", str(tmp_path), "squeezenet"]) == 0
    assert "up to date" not in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(target)))
    before = target.stat().st_ino
    assert build_models.main(["--out", str(tmp_path), "--force", "squeezenet"]) == 0
    assert target.stat().st_ino != before  # written anew (temp file + rename)


def test_unknown_function_is_refused(build_models: ModuleType) -> None:
    with pytest.raises(SystemExit):
        build_models.main(["nope"])


def test_every_example_has_what_the_readme_promises() -> None:
    for name in EXAMPLES:
        directory = FUNCTIONS / name
        for file in ("handler.py", "labels.txt", "faasd.yaml", "README.md"):
            assert (directory / file).is_file(), f"{name}/{file}"
        samples = [p for p in ("sample.png", "sample.jpg", "sample.json")
                   if (directory / p).is_file()]
        assert samples, f"{name} has no sample request"
    assert (FUNCTIONS / "squeezenet" / "labels.txt").read_text().splitlines()[999] == "class 999"
    assert "not trained" in (FUNCTIONS / "resnet50" / "README.md").read_text()
