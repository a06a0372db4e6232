"""The example workflows (workflows/*/): every edge fits (names, dtypes, shapes), and
faasd.workflows.reference.run_directly gives what running the graphs by hand gives."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from faasd.runtime.onnx import OnnxModel
from faasd.workflows.reference import load_workflow, run_directly
from faasd.workflows.spec import load_spec
from faasd.workflows.wiring import Signature, wire

from .conftest import FUNCTIONS, WORKFLOW_STAGES, WORKFLOWS, import_path
from .test_build_models import randomized

EXPECTED_SHAPES = {  # source, sinks, and the kind of DAG (issue 12: chain, fork-join, diamond)
    "classify": ("imagepre", ["label"]),
    "ensemble": ("imagepre", ["vote"]),
    "cutout": ("imagepre", ["composite"]),
}


def model_of(name: str, workflow: Path, functions: Path) -> OnnxModel:
    directory = workflow / name if (workflow / name).is_dir() else functions / name
    return OnnxModel.load(directory / "model.onnx")


@pytest.mark.parametrize("name", sorted(WORKFLOW_STAGES))
def test_every_edge_fits(workflow_tree: tuple[Path, Path], name: str) -> None:
    """The daemon's wiring accepts the workflow, and every input it feeds gets an output of
    exactly its datatype and shape (-1 = the batch N; the wiring would let -1 match a size)."""
    functions, workflows = workflow_tree
    spec = load_spec(WORKFLOWS / name)
    assert spec.slo_ms > 0
    assert (spec.source, list(spec.sinks())) == EXPECTED_SHAPES[name]
    assert sorted(spec.local) == sorted(WORKFLOW_STAGES[name])
    models = {f: model_of(f, workflows / name, functions) for f in spec.functions}
    wiring = wire(spec, {f: Signature(m.inputs, m.outputs) for f, m in models.items()})
    for function, feeds in wiring.items():
        inputs = {s.name: s for s in models[function].inputs}
        if function == spec.source:
            assert feeds == ()
            continue
        assert sorted(f.input for f in feeds) == sorted(inputs), function
        for feed in feeds:
            output = next(s for s in models[feed.source].outputs if s.name == feed.output)
            assert (output.datatype, output.shape) == (inputs[feed.input].datatype,
                                                       inputs[feed.input].shape), feed
    assert all(model.batched for model in models.values())


def sample(name: str) -> bytes:
    return (WORKFLOWS / name / "sample.jpg").read_bytes()


def by_hand(name: str, body: bytes, workflow: Path, functions: Path) -> dict[str, np.ndarray]:
    """The workflow's graphs chained explicitly, starting from squeezenet's own preprocess."""
    imagenet = import_path(FUNCTIONS / "squeezenet" / "handler.py", "by_hand_imagenet")
    picture = imagenet.preprocess(body, "image/jpeg")["data_0"]

    def run(function: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        return model_of(function, workflow, functions).run(feeds)

    if name == "classify":
        probs = run("squeezenet", data_0=picture)["softmaxout_1"]
        return run("label", probabilities=probs)
    if name == "ensemble":
        a = run("squeezenet", data_0=picture)["softmaxout_1"]
        b = run("resnet50", data_0=picture)["softmax_1"]
        return run("vote", squeezenet=a, resnet50=b)
    mask = run("segment", data_0=picture)["mask"]
    return run("composite", image=picture, mask=mask)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WORKFLOW_STAGES))
def test_run_directly_equals_the_graphs_by_hand(
    workflow_tree: tuple[Path, Path], name: str
) -> None:
    functions, workflows = workflow_tree
    body = sample(name)
    result = run_directly(workflows / name, body, content_type="image/jpeg",
                          functions_dir=functions)
    expected = by_hand(name, body, workflows / name, functions)
    (sink,) = EXPECTED_SHAPES[name][1]
    got = result.outputs[sink]
    assert got.keys() == expected.keys()
    for output, tensor in expected.items():
        np.testing.assert_allclose(got[output].astype(np.float64), tensor.astype(np.float64),
                                   rtol=1e-4, atol=1e-6 if tensor.dtype.kind == "f" else 1)
    answer = result.answer
    if name == "cutout":
        assert answer["coverage"] == pytest.approx(float(expected["coverage"][0]), rel=1e-5)
        assert 0.3 < answer["coverage"] < 0.6  # the sample: sky over hills, and a sun
        assert answer["thumbnail"]["width"] == answer["thumbnail"]["height"] == 56
    else:  # the untrained classifiers: 0.001 for every class, so classes 0-4
        assert [c["index"] for c in answer["top5"]] == expected["indices"][0].tolist()
        assert answer["top5"][0] == {"label": "class 0", "index": 0,
                                     "probability": pytest.approx(0.001)}


@pytest.mark.slow
def test_a_batch_of_three_answers_as_three_calls(workflow_tree: tuple[Path, Path]) -> None:
    functions, workflows = workflow_tree
    cutout = load_workflow(workflows / "cutout", functions)
    handler = import_path(FUNCTIONS / "imagepre" / "handler.py", "batch_imagepre")
    rng = np.random.default_rng(9)
    pixels = [handler.preprocess(sample("cutout"), "image/jpeg")["image"][0],
              rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
              np.full((256, 256, 3), (40, 160, 40), dtype=np.uint8)]
    together = cutout.run({"image": np.stack(pixels)})
    assert len(together.answers) == 3
    alone = [cutout.run({"image": p}).answer for p in pixels]  # batch axis added as a sandbox does
    for joint, single in zip(together.answers, alone, strict=True):
        assert joint["coverage"] == pytest.approx(single["coverage"], rel=1e-5)
        assert joint["box"] == single["box"]
    assert alone[2]["coverage"] > 0.95 and alone[2]["box"] == [0, 0, 224, 224]


@pytest.fixture(scope="module")
def random_classifiers(workflow_tree: tuple[Path, Path],
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the tree whose squeezenet and resnet50 have random weights, so that different
    pictures get different classes and a run that mixed tensors up would show."""
    functions, workflows = workflow_tree
    root = tmp_path_factory.mktemp("random")
    for name in ("imagepre", "label", "squeezenet", "resnet50"):
        shutil.copytree(functions / name, root / "functions" / name)
    shutil.copytree(workflows, root / "workflows")
    for seed, name in enumerate(("squeezenet", "resnet50")):
        path = root / "functions" / name / "model.onnx"
        onnx.save(randomized(onnx.load(str(path)), seed), str(path))
    return root / "functions", root / "workflows"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["classify", "ensemble"])
def test_run_directly_with_trained_looking_classifiers(
    random_classifiers: tuple[Path, Path], name: str
) -> None:
    functions, workflows = random_classifiers
    workflow = load_workflow(workflows / name, functions)
    rng = np.random.default_rng(10)
    scores = []
    for _ in range(3):
        body = png(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
        result = workflow.run(body, "image/png")
        expected = by_hand(name, body, workflows / name, functions)
        (got,) = result.outputs.values()
        for output, tensor in expected.items():
            np.testing.assert_allclose(got[output], tensor, rtol=1e-4, atol=1e-7)
        assert [c["index"] for c in result.answer["top5"]] == expected["indices"][0].tolist()
        np.testing.assert_allclose([c["probability"] for c in result.answer["top5"]],
                                   expected["scores"][0], rtol=1e-4)
        scores.append(got["probabilities"] if name == "ensemble" else got["scores"])
    # Different pictures, different answers: the check above compared something.
    assert np.abs(scores[0] - scores[1]).max() > 1e-4


def png(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, "PNG")
    return stream.getvalue()


@pytest.mark.parametrize("name", sorted(WORKFLOW_STAGES))
def test_every_workflow_has_what_the_readme_promises(name: str) -> None:
    directory = WORKFLOWS / name
    readme = (directory / "README.md").read_text()
    slo_ms = load_spec(directory).slo_ms
    assert f"slo_ms: {slo_ms:g}" in readme  # the README explains the SLO it shows
    assert f"--data-binary @workflows/{name}/sample.jpg" in readme
    assert f"http://127.0.0.1:8080/workflow/{name}" in readme
    assert (directory / "sample.jpg").is_file()
    for stage in WORKFLOW_STAGES[name]:
        assert (directory / stage / "faasd.yaml").is_file()
        assert f"`{stage}/`" in readme or f"`{stage}`" in readme
    assert name in (WORKFLOWS / "README.md").read_text()
