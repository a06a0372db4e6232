"""The workflows' functions deployed alone in a real daemon (`faasd up` on port 0) and called
over HTTP with their sample requests, answers checked against running the graphs here."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from faasd.handlers import decode_image, imagenet_tensor
from faasd.runtime.onnx import OnnxModel
from tests.faasd.daemon_process import DaemonProcess, start_daemon

from .conftest import FUNCTIONS, WORKFLOWS

pytestmark = pytest.mark.slow

DIRECTORIES = {
    "imagepre": FUNCTIONS / "imagepre",
    "label": FUNCTIONS / "label",
    "vote": WORKFLOWS / "ensemble" / "vote",
    "segment": WORKFLOWS / "cutout" / "segment",
    "composite": WORKFLOWS / "cutout" / "composite",
}


@pytest.fixture(scope="module")
def daemon(workflow_tree: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if workflow_tree != (FUNCTIONS, WORKFLOWS):
        pytest.skip("the examples' models are not built under functions/ and workflows/")
    tmp = tmp_path_factory.mktemp("daemon")
    for name, directory in DIRECTORIES.items():
        shutil.copytree(directory, tmp / "functions" / name)
    live = start_daemon(tmp, tmp / "functions")
    yield live
    assert live.stop() == 0, live.log()


def post(daemon: DaemonProcess, path: str, body: bytes, content_type: str) -> object:
    request = urllib.request.Request(f"{daemon.url}{path}", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def tensors_of(sample: Path) -> dict[str, np.ndarray]:
    request = json.loads(sample.read_text())
    return {t["name"]: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
            for t in request["inputs"]}


def here(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return OnnxModel.load(DIRECTORIES[name] / "model.onnx").run(feeds)


def test_imagepre_answers_a_picture(daemon: DaemonProcess) -> None:
    jpeg = (FUNCTIONS / "imagepre" / "sample.jpg").read_bytes()
    answer = post(daemon, "/function/imagepre", jpeg, "image/jpeg")
    assert isinstance(answer, dict)
    got = np.asarray(answer["data_0"], dtype=np.float32)
    # The picture as squeezenet's own preprocess makes it.
    np.testing.assert_allclose(got, imagenet_tensor(decode_image(jpeg))[np.newaxis], atol=2e-6)


@pytest.mark.parametrize("name", ["label", "vote"])
def test_label_and_vote_answer_their_samples(daemon: DaemonProcess, name: str) -> None:
    sample = DIRECTORIES[name] / "sample.json"
    expected = here(name, tensors_of(sample))
    answer = post(daemon, f"/function/{name}", sample.read_bytes(), "application/json")
    assert isinstance(answer, dict)
    assert [c["index"] for c in answer["top5"]] == expected["indices"][0].tolist()
    v2 = post(daemon, f"/v2/models/{name}/infer", sample.read_bytes(), "application/json")
    assert isinstance(v2, dict)
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["indices"]["data"] == expected["indices"][0].tolist()


def test_segment_then_composite_over_http(daemon: DaemonProcess) -> None:
    sample = DIRECTORIES["segment"] / "sample.json"
    v2 = post(daemon, "/v2/models/segment/infer", sample.read_bytes(), "application/json")
    assert isinstance(v2, dict)
    (mask,) = v2["outputs"]
    assert (mask["name"], mask["shape"], mask["datatype"]) == ("mask", [1, 1, 224, 224], "FP32")
    expected = here("segment", tensors_of(sample))["mask"]
    np.testing.assert_allclose(np.asarray(mask["data"]).reshape(mask["shape"]), expected,
                               atol=1e-6)
    composite = DIRECTORIES["composite"] / "sample.json"
    answer = post(daemon, "/function/composite", composite.read_bytes(), "application/json")
    assert isinstance(answer, dict)
    coverage = here("composite", tensors_of(composite))["coverage"]
    assert answer["coverage"] == pytest.approx(float(coverage[0]), rel=1e-5)
    assert answer["box"] is not None and answer["thumbnail"]["width"] == 56
