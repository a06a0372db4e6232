"""The example workflows in a real daemon: each answers its sample as run_directly does (the
OpenFaaS-style path and the V2 ensemble path), and concurrent calls with different pictures,
batched together in the stages, each get their own answer."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from faasd.workflows.reference import LoadedWorkflow, load_workflow

from .conftest import FUNCTIONS, WORKFLOW_STAGES, WORKFLOWS, import_path

pytestmark = pytest.mark.slow

SHARED = ("imagepre", "label", "squeezenet", "resnet50")


@pytest.fixture
async def daemon(workflow_tree: tuple[Path, Path], tmp_path: Path) -> AsyncIterator[Daemon]:
    if workflow_tree != (FUNCTIONS, WORKFLOWS):
        pytest.skip("the examples' models are not built under functions/ and workflows/")
    for name in SHARED:  # only what the workflows use: digits need not load
        shutil.copytree(FUNCTIONS / name, tmp_path / "functions" / name)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=tmp_path / "functions", workflows_dir=WORKFLOWS,
                          drain_timeout_s=10)
    async with Daemon(config) as running:
        assert not running.load_errors, running.load_errors
        yield running


@pytest.fixture(scope="module")
def references() -> dict[str, LoadedWorkflow]:
    return {name: load_workflow(WORKFLOWS / name, FUNCTIONS) for name in WORKFLOW_STAGES}


def picture(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, "PNG")
    return stream.getvalue()


def thumbnail(answer: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["thumbnail"]["base64"]))))


def assert_same_answer(name: str, got: dict[str, Any], expected: dict[str, Any]) -> None:
    if name == "cutout":
        assert got["coverage"] == pytest.approx(expected["coverage"], rel=1e-5)
        assert got["box"] == expected["box"]
        difference = thumbnail(got).astype(int) - thumbnail(expected).astype(int)
        assert np.abs(difference).max() <= 1  # a rounding apart at most
        return
    assert [c["index"] for c in got["top5"]] == [c["index"] for c in expected["top5"]]
    assert [c["label"] for c in got["top5"]] == [c["label"] for c in expected["top5"]]
    np.testing.assert_allclose([c["probability"] for c in got["top5"]],
                               [c["probability"] for c in expected["top5"]], rtol=1e-5)


async def test_each_example_answers_its_sample_as_run_directly_does(
    daemon: Daemon, references: dict[str, LoadedWorkflow]
) -> None:
    async with aiohttp.ClientSession() as session:
        for name, reference in references.items():
            body = (WORKFLOWS / name / "sample.jpg").read_bytes()
            async with session.post(f"{daemon.url}/workflow/{name}", data=body,
                                    headers={"Content-Type": "image/jpeg"}) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Faasd-Slo-Ms"] == f"{reference.spec.slo_ms:g}"
                got = await resp.json()
            assert_same_answer(name, got, reference.run(body, "image/jpeg").answer)


async def test_the_v2_ensemble_gives_the_sinks_tensors(
    daemon: Daemon, references: dict[str, LoadedWorkflow]
) -> None:
    handler = import_path(FUNCTIONS / "imagepre" / "handler.py", "v2_imagepre")
    body = (WORKFLOWS / "cutout" / "sample.jpg").read_bytes()
    pixels = handler.preprocess(body, "image/jpeg")["image"]
    request = {"inputs": [{"name": "image", "shape": list(pixels.shape), "datatype": "UINT8",
                           "data": pixels.ravel().tolist()}]}
    async with aiohttp.ClientSession() as session:
        for name, reference in references.items():
            async with session.post(f"{daemon.url}/v2/models/{name}/infer",
                                    json=request) as resp:
                assert resp.status == 200, await resp.text()
                doc = await resp.json()
            (sink,) = reference.spec.sinks()
            expected = reference.run({"image": pixels}).outputs[sink]
            outputs = {o["name"]: o for o in doc["outputs"]}
            assert outputs.keys() == expected.keys()
            for output, tensor in expected.items():
                got = np.asarray(outputs[output]["data"]).reshape(outputs[output]["shape"])
                assert got.shape == tensor.shape
                tolerance = 1 if tensor.dtype == np.uint8 else 1e-5
                np.testing.assert_allclose(got, tensor, rtol=1e-5, atol=tolerance)


async def test_concurrent_calls_each_get_their_own_answer(
    daemon: Daemon, references: dict[str, LoadedWorkflow]
) -> None:
    """Eight different pictures at once through the diamond: the stages may batch them together
    (max_batch_size 8), and each answer must still be its own picture's."""
    rng = np.random.default_rng(11)
    colours = [(60, 120, 220), (60, 140, 60), (250, 210, 60), (200, 225, 250)]
    bodies = [picture(np.full((120, 160, 3), c, dtype=np.uint8)) for c in colours]
    bodies += [picture(rng.integers(0, 256, (100, 140, 3), dtype=np.uint8)) for _ in range(4)]

    async def call(session: aiohttp.ClientSession, body: bytes) -> dict[str, Any]:
        async with session.post(f"{daemon.url}/workflow/cutout", data=body,
                                headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 200, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async with aiohttp.ClientSession() as session:
        await call(session, bodies[0])  # warm the sandboxes so that the calls meet in batches
        answers = await asyncio.gather(*(call(session, body) for body in bodies))
    coverages = set()
    for body, answer in zip(bodies, answers, strict=True):
        assert_same_answer("cutout", answer, references["cutout"].run(body, "image/png").answer)
        coverages.add(round(answer["coverage"], 4))
    assert len(coverages) >= 6  # the pictures really differ
