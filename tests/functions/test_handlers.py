"""The example handlers, run as a sandbox runs them: preprocess -> model -> postprocess."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from faasd.functions.loader import load_function
from faasd.functions.registry import Registry
from faasd.functions.spec import FunctionSettings, ModelInfo
from faasd.handlers import IMAGENET_MEAN, IMAGENET_STD

from .conftest import EXAMPLES, FUNCTIONS

SAMPLE_DIGIT = 3  # functions/digits/sample.png is held-out digit #30 of the split: a 3


def call(handler: ModuleType, models: Path, name: str, body: bytes, content_type: str) -> Any:
    session = ort.InferenceSession(str(models / name / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    inputs = handler.preprocess(body, content_type)
    names = [o.name for o in session.get_outputs()]
    return handler.postprocess(dict(zip(names, session.run(None, inputs), strict=True)))


def encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


# ------------------------------------------------------------------------------- digits


def test_digits_sample_png_is_classified_right(digits_handler: ModuleType, models: Path) -> None:
    answer = call(digits_handler, models, "digits", (FUNCTIONS / "digits" / "sample.png")
                  .read_bytes(), "image/png")
    assert answer["label"] == SAMPLE_DIGIT
    assert len(answer["probabilities"]) == 10
    assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert max(answer["probabilities"]) == answer["probabilities"][SAMPLE_DIGIT]
    json.dumps(answer)  # the response is plain JSON


def test_digits_sample_json_is_the_same_digit(models: Path) -> None:
    request = json.loads((FUNCTIONS / "digits" / "sample.json").read_text())
    (tensor,) = request["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("input", [1, 64], "FP32")
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    assert x.min() >= 0 and x.max() <= 16
    session = ort.InferenceSession(str(models / "digits" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert int(session.run(None, {"input": x})[0].argmax()) == SAMPLE_DIGIT


@pytest.mark.parametrize("variant", ["jpeg, larger, off-centre", "light on dark",
                                     "transparent background", "rgb"])
def test_digits_any_picture_of_the_sample(
    digits_handler: ModuleType, models: Path, variant: str
) -> None:
    sample = Image.open(FUNCTIONS / "digits" / "sample.png").convert("L")
    if variant.startswith("jpeg"):
        paper = Image.new("L", (420, 300), 235)  # off-white paper, digit not centred
        paper.paste(sample.resize((200, 200), Image.Resampling.BILINEAR), (30, 70))
        body = encode(paper, "JPEG")
    elif variant == "light on dark":
        body = encode(ImageOps.invert(sample), "PNG")
    elif variant == "transparent background":
        ink = Image.new("RGBA", sample.size, (0, 0, 0, 0))
        ink.putalpha(ImageOps.invert(sample))  # black ink; alpha is how dark the pixel was
        body = encode(ink, "PNG")
    else:
        body = encode(sample.convert("RGB"), "PNG")
    assert call(digits_handler, models, "digits", body, "image/png")["label"] == SAMPLE_DIGIT


@pytest.mark.slow
def test_digits_handler_reads_held_out_digits_drawn_at_any_size(
    build_models: ModuleType, digits_handler: ModuleType, models: Path
) -> None:
    """Every held-out digit drawn as a picture (various sizes, margins, smoothing) goes
    through the handler; the model must still be right on 90% of them."""
    data = build_models.digits_data()
    rng = np.random.default_rng(0)
    session = ort.InferenceSession(str(models / "digits" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    rows = []
    for pixels in data.test_x:
        picture = build_models.digit_picture(pixels, scale=int(rng.integers(3, 30)),
                                             border=int(rng.integers(0, 40)))
        side = int(rng.integers(24, 300))
        rows.append(digits_handler.to_dataset_pixels(
            picture.resize((side, side), Image.Resampling.BILINEAR)))
    predicted = session.run(None, {"input": np.stack(rows)})[0].argmax(axis=1)
    assert float((predicted == data.test_y).mean()) >= 0.9


@pytest.mark.parametrize(("body", "words"), [
    (b"", "empty body"),
    (b"this is not a picture", "cannot read the body as a picture"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot read the body as a picture"),
])
def test_digits_corrupt_picture_is_a_clear_value_error(
    digits_handler: ModuleType, body: bytes, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        digits_handler.preprocess(body, "image/png")


def test_digits_truncated_picture_is_a_value_error(digits_handler: ModuleType) -> None:
    whole = encode(Image.open(FUNCTIONS / "digits" / "sample.png").resize((300, 300)), "JPEG")
    with pytest.raises(ValueError, match="cannot read the body as a picture"):
        digits_handler.preprocess(whole[: len(whole) // 2], "image/jpeg")


def test_digits_blank_picture_is_a_value_error(digits_handler: ModuleType) -> None:
    with pytest.raises(ValueError, match="no digit found"):
        digits_handler.preprocess(encode(Image.new("L", (64, 64), 250), "PNG"), "image/png")


def test_digits_preprocess_matches_the_dataset_scale(digits_handler: ModuleType) -> None:
    # A solid ink square filling the picture: every block full, 16 everywhere.
    picture = Image.new("L", (80, 80), 255)
    picture.paste(0, (20, 20, 60, 60))
    pixels = digits_handler.preprocess(encode(picture, "PNG"), "image/png")["input"]
    assert pixels.shape == (1, 64) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, 16.0, rtol=1e-5)


# ------------------------------------------------------------------------------- ImageNet


def test_imagenet_preprocess_resizes_crops_and_normalizes(imagenet_handler: ModuleType) -> None:
    # 400x300, left half red, right half blue: shorter side -> 256 (341x256), centre 224 crop.
    picture = Image.new("RGB", (400, 300), (255, 0, 0))
    picture.paste((0, 0, 255), (200, 0, 400, 300))
    x = imagenet_handler.preprocess(encode(picture, "PNG"), "image/png")["data_0"]
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    red = (np.array([1.0, 0.0, 0.0]) - mean) / std
    blue = (np.array([0.0, 0.0, 1.0]) - mean) / std
    np.testing.assert_allclose(x[0, :, 100, 0], red, rtol=1e-5)  # left edge of the crop
    np.testing.assert_allclose(x[0, :, 100, 223], blue, rtol=1e-5)  # right edge
    # The colour boundary sits at the centre of the crop, within the bilinear blur.
    row = x[0, 0, 100]
    assert np.all(row[:110] == row[0]) and np.all(row[114:] == row[223])


def test_imagenet_postprocess_ranks_the_top5(imagenet_handler: ModuleType) -> None:
    scores = np.full((1, 1000, 1, 1), 1e-4, dtype=np.float32)
    for rank, index in enumerate([7, 999, 0, 512, 3]):
        scores[0, index, 0, 0] = 0.5 - rank * 0.05
    answer = imagenet_handler.postprocess({"softmaxout_1": scores})
    assert [c["index"] for c in answer["top5"]] == [7, 999, 0, 512, 3]
    assert [c["label"] for c in answer["top5"]] == [f"class {i}" for i in (7, 999, 0, 512, 3)]
    assert answer["top5"][0]["probability"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_imagenet_sample_through_the_model(
    imagenet_handler: ModuleType, models: Path, name: str
) -> None:
    answer = call(imagenet_handler, models, name, (FUNCTIONS / name / "sample.jpg").read_bytes(),
                  "image/jpeg")
    top5 = answer["top5"]
    assert len(top5) == 5
    # Constant untrained weights: every class gets 1/1000 and ties keep the lowest indices.
    assert [c["index"] for c in top5] == [0, 1, 2, 3, 4]
    assert all(c["probability"] == pytest.approx(0.001, rel=1e-3) for c in top5)
    json.dumps(answer)


def test_imagenet_sample_json_is_the_sample_picture(imagenet_handler: ModuleType) -> None:
    path = FUNCTIONS / "squeezenet" / "sample.json"
    if not path.exists():
        pytest.skip("sample.json is written by functions/build_models.py")
    (tensor,) = json.loads(path.read_text())["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == (
        "data_0", [1, 3, 224, 224], "FP32")
    expected = imagenet_handler.preprocess(
        (FUNCTIONS / "squeezenet" / "sample.jpg").read_bytes(), "image/jpeg")["data_0"]
    np.testing.assert_allclose(np.asarray(tensor["data"]).reshape(1, 3, 224, 224), expected,
                               atol=6e-5)


def test_imagenet_corrupt_picture_is_a_value_error(imagenet_handler: ModuleType) -> None:
    with pytest.raises(ValueError, match="cannot read the body as a picture"):
        imagenet_handler.preprocess(b"GIF89a broken", "image/gif")


def test_the_two_imagenet_handlers_are_the_same_file() -> None:
    assert (FUNCTIONS / "squeezenet" / "handler.py").read_bytes() == (
        FUNCTIONS / "resnet50" / "handler.py").read_bytes()


# ------------------------------------------------------------------------------- deployable


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_passes_the_loader_and_installs(
    name: str, models: Path, tmp_path: Path
) -> None:
    if models != FUNCTIONS:
        pytest.skip("the examples' models are not built under functions/")
    loaded = load_function(FUNCTIONS / name, FunctionSettings())
    assert loaded.name == name
    assert loaded.handler_path == FUNCTIONS / name / "handler.py"
    assert loaded.settings.max_batch_size > 1  # batching on for every example
    registry = Registry(tmp_path, FunctionSettings())
    staged = registry.stage(FUNCTIONS / name)
    session = ort.InferenceSession(str(staged.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "N"
    final = registry.commit(staged, ModelInfo((), (), batched=True, has_preprocess=True,
                                              has_postprocess=True))
    assert registry.get(name) == final
