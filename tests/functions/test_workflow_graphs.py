"""functions/workflow_graphs.py: each graph computes what it claims (checked against numpy and
the classifiers' own handlers), takes any batch, and the built models are those graphs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from faasd.handlers import top_k

from .conftest import FUNCTIONS, WORKFLOWS, import_path

#: Every built model's tensors: (name, ONNX type, shape) of its inputs, then of its outputs.
SIGNATURES = {
    "imagepre": ([("image", "tensor(uint8)", ["N", 256, 256, 3])],
                 [("data_0", "tensor(float)", ["N", 3, 224, 224])]),
    "label": ([("probabilities", "tensor(float)", ["N", 1000, 1, 1])],
              [("scores", "tensor(float)", ["N", 5]), ("indices", "tensor(int64)", ["N", 5])]),
    "ensemble/vote": ([("squeezenet", "tensor(float)", ["N", 1000, 1, 1]),
                       ("resnet50", "tensor(float)", ["N", 1000])],
                      [("probabilities", "tensor(float)", ["N", 1000]),
                       ("scores", "tensor(float)", ["N", 5]),
                       ("indices", "tensor(int64)", ["N", 5])]),
    "cutout/segment": ([("data_0", "tensor(float)", ["N", 3, 224, 224])],
                       [("mask", "tensor(float)", ["N", 1, 224, 224])]),
    "cutout/composite": ([("image", "tensor(float)", ["N", 3, 224, 224]),
                          ("mask", "tensor(float)", ["N", 1, 224, 224])],
                         [("coverage", "tensor(float)", ["N"]),
                          ("thumbnail", "tensor(uint8)", ["N", 56, 56, 4])]),
}


@pytest.fixture(scope="module")
def graphs() -> ModuleType:
    return import_path(FUNCTIONS / "workflow_graphs.py", "workflow_graphs")


@pytest.fixture(scope="module")
def imagepre_handler() -> ModuleType:
    return import_path(FUNCTIONS / "imagepre" / "handler.py", "imagepre_handler")


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs: list[np.ndarray] = session.run(None, feeds)
    return outputs


def probabilities(rng: np.random.Generator, rows: int) -> np.ndarray:
    logits = rng.standard_normal((rows, 1000)) * 3
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", ["imagepre", "label", "vote", "segment", "composite"])
def test_every_graph_is_valid_and_takes_any_batch(
    build_models: ModuleType, graphs: ModuleType, name: str
) -> None:
    model = graphs.GRAPHS[name]()
    onnx.checker.check_model(model, full_check=True)
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "N" for i in model.graph.input)
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "N" for o in model.graph.output)
    build_models.check_batch_dynamic(model, batch=3)


@pytest.mark.parametrize("where", sorted(SIGNATURES))
def test_built_models_have_the_documented_tensors(
    workflow_tree: tuple[Path, Path], where: str
) -> None:
    functions, workflows = workflow_tree
    path = (workflows if "/" in where else functions) / where / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = SIGNATURES[where]
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == inputs
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == outputs
    model = onnx.load(str(path))
    assert any(p.key == "faasd.recipe" for p in model.metadata_props)  # built by the script


def test_imagepre_equals_the_classifiers_own_preprocessing(
    graphs: ModuleType, imagepre_handler: ModuleType, imagenet_handler: ModuleType
) -> None:
    """handler + graph = faasd.handlers.imagenet_tensor (squeezenet's preprocess), for the
    sample and for pictures of other sizes and shapes, to within float rounding."""
    rng = np.random.default_rng(3)
    pictures = [Image.open(FUNCTIONS / "imagepre" / "sample.jpg")]
    for size in [(300, 500), (640, 257), (224, 224), (1000, 90)]:
        noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        pictures.append(Image.fromarray(noise))
    for picture in pictures:
        stream = io.BytesIO()
        picture.save(stream, "PNG")
        body = stream.getvalue()
        (pixels,) = imagepre_handler.preprocess(body, "image/png").values()
        assert pixels.shape == (1, 256, 256, 3) and pixels.dtype == np.uint8
        (ours,) = run(graphs.imagepre_graph(), image=pixels)
        expected = imagenet_handler.preprocess(body, "image/png")["data_0"]
        assert ours.shape == expected.shape == (1, 3, 224, 224)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="picture"):
        imagepre_handler.preprocess(b"not a picture", "image/png")


def test_label_is_numpy_top5_and_answers_like_the_classifiers(graphs: ModuleType) -> None:
    handler = import_path(FUNCTIONS / "label" / "handler.py", "label_handler")
    probs = probabilities(np.random.default_rng(4), 3)
    scores, indices = run(graphs.label_graph(), probabilities=probs.reshape(3, 1000, 1, 1))
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(probs, expected, axis=1))
    labels = tuple((FUNCTIONS / "label" / "labels.txt").read_text().splitlines())
    for row in range(3):
        answer = handler.postprocess({"scores": scores[row : row + 1],
                                      "indices": indices[row : row + 1]})
        assert answer == {"top5": top_k(probs[row], labels, 5)}
    # Ties (the untrained classifiers give 0.001 everywhere): lower index first, as top_k.
    flat = np.full((1, 1000, 1, 1), 0.001, dtype=np.float32)
    assert run(graphs.label_graph(), probabilities=flat)[1].tolist() == [[0, 1, 2, 3, 4]]
    assert labels == tuple((FUNCTIONS / "squeezenet" / "labels.txt").read_text().splitlines())


def test_vote_is_the_mean_of_both_classifiers(graphs: ModuleType) -> None:
    rng = np.random.default_rng(5)
    a, b = probabilities(rng, 2), probabilities(rng, 2)
    mean, scores, indices = run(graphs.vote_graph(), squeezenet=a.reshape(2, 1000, 1, 1),
                                resnet50=b)
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)
    expected = np.argsort(-mean, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    # The vote can pick a class that neither member ranks first.
    both = np.full((1, 1000), 0.0, dtype=np.float32)
    first, second = both.copy(), both.copy()
    first[0, [1, 7]] = [0.6, 0.4]
    second[0, [2, 7]] = [0.6, 0.4]
    _, _, top = run(graphs.vote_graph(), squeezenet=first.reshape(1, 1000, 1, 1),
                    resnet50=second)
    assert top[0, 0] == 7
    vote = import_path(WORKFLOWS / "ensemble" / "vote" / "handler.py", "vote_handler")
    answer = vote.postprocess({"scores": scores[:1], "indices": indices[:1]})
    assert [c["index"] for c in answer["top5"]] == expected[0].tolist()


def picture_tensor(graphs: ModuleType, handler: ModuleType, picture: Image.Image) -> np.ndarray:
    tensor: np.ndarray = run(graphs.imagepre_graph(),
                             image=handler.to_pixels(picture)[np.newaxis])[0]
    return tensor


def test_segment_keys_out_blue(graphs: ModuleType, imagepre_handler: ModuleType) -> None:
    sample = Image.open(WORKFLOWS / "cutout" / "sample.jpg").convert("RGB")
    pictures = [sample] + [Image.new("RGB", (64, 48), colour)
                           for colour in [(60, 120, 220), (200, 225, 250), (60, 140, 60)]]
    batch = np.concatenate([picture_tensor(graphs, imagepre_handler, p) for p in pictures])
    (mask,) = run(graphs.segment_graph(), data_0=batch)
    assert mask.shape == (4, 1, 224, 224) and mask.min() >= 0 and mask.max() <= 1
    # The sample (160x120 -> 256 high, cropped): sky above, hills below, the sun top right.
    assert mask[0, 0, 60, 60] < 0.1 and mask[0, 0, 210, 112] > 0.9 and mask[0, 0, 45, 190] > 0.9
    coverage = mask.mean(axis=(1, 2, 3))
    assert 0.3 < coverage[0] < 0.6
    assert coverage[1] < 0.05 and coverage[2] < 0.1  # deep and pale blue: background
    assert coverage[3] > 0.95  # green: foreground


def test_composite_cuts_out_and_summarises(graphs: ModuleType) -> None:
    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
    mean = graphs.IMAGENET_MEAN * 255
    std = graphs.IMAGENET_STD * 255
    image = ((pixels - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    mask = np.zeros((2, 1, 224, 224), dtype=np.float32)
    mask[0, 0, 40:120, 80:200] = 1.0
    mask[1, 0] = rng.random((224, 224))
    coverage, thumbnail = run(graphs.composite_graph(), image=image, mask=mask)
    np.testing.assert_allclose(coverage, mask.mean(axis=(1, 2, 3)), rtol=1e-5)
    rgba = np.concatenate([pixels * mask.transpose(0, 2, 3, 1),
                           255 * mask.transpose(0, 2, 3, 1)], axis=3)
    blocks = rgba.reshape(2, 56, 4, 56, 4, 4).mean(axis=(2, 4))
    assert thumbnail.dtype == np.uint8
    assert np.abs(thumbnail.astype(np.int16) - np.round(blocks)).max() <= 1

    handler = import_path(WORKFLOWS / "cutout" / "composite" / "handler.py", "composite_h")
    answer = handler.postprocess({"coverage": coverage[:1], "thumbnail": thumbnail[:1]})
    assert answer["coverage"] == pytest.approx(80 * 120 / 224**2)
    assert answer["box"] == [80, 40, 200, 120]
    png = Image.open(io.BytesIO(base64.b64decode(answer["thumbnail"]["base64"])))
    assert (png.mode, png.size) == ("RGBA", (56, 56))
    np.testing.assert_array_equal(np.asarray(png), thumbnail[0])
    empty = handler.postprocess({"coverage": np.zeros(1, np.float32),
                                 "thumbnail": np.zeros((1, 56, 56, 4), np.uint8)})
    assert empty["box"] is None
