"""The workflows' functions deployed alone as the daemon deploys them (registry.stage -> a real
sandbox's inspect -> registry.commit), each answering its sample request in a real sandbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from esg.model import Config
from faasd.functions.registry import Registry
from faasd.functions.spec import FunctionSettings, FunctionVersion, TensorSpec
from faasd.handlers import decode_image, imagenet_tensor
from faasd.sandbox.items import BodyItem, ItemFailure, TensorItem, TensorResult
from faasd.sandbox.pool import SandboxPool

from .conftest import FUNCTIONS, WORKFLOWS
from .test_in_sandbox import body_of

pytestmark = pytest.mark.slow


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(state_dir=tmp_path / "pool", max_sandboxes=4,
                           cgroup_parent=f"faasd-test-{uuid.uuid4().hex[:8]}") as live:
        yield live


async def deploy(pool: SandboxPool, tmp_path: Path, directory: Path) -> FunctionVersion:
    registry = Registry(tmp_path / "state", FunctionSettings())
    staged = registry.stage(directory)
    try:
        info = await pool.inspect(staged)
    except BaseException:
        registry.discard(staged)
        raise
    return registry.commit(staged, info)


def v2_tensors(path: Path) -> dict[str, np.ndarray]:
    """sample.json (a V2 inference request) as the tensors it carries."""
    request = json.loads(path.read_text())
    dtypes = {"FP32": np.float32, "UINT8": np.uint8, "INT64": np.int64}
    return {t["name"]: np.asarray(t["data"], dtype=dtypes[t["datatype"]]).reshape(t["shape"])
            for t in request["inputs"]}


@pytest.fixture
def built(workflow_tree: tuple[Path, Path]) -> None:
    if workflow_tree != (FUNCTIONS, WORKFLOWS):
        pytest.skip("the examples' models are not built under functions/ and workflows/")


@pytest.mark.usefixtures("built")
async def test_imagepre_in_a_sandbox(pool: SandboxPool, tmp_path: Path) -> None:
    version = await deploy(pool, tmp_path, FUNCTIONS / "imagepre")
    assert version.inputs == (TensorSpec("image", "UINT8", (-1, 256, 256, 3)),)
    assert version.outputs == (TensorSpec("data_0", "FP32", (-1, 3, 224, 224)),)
    assert version.batched and version.has_preprocess and not version.has_postprocess
    jpeg = (FUNCTIONS / "imagepre" / "sample.jpg").read_bytes()
    items = [BodyItem(jpeg, "image/jpeg"), BodyItem(b"GIF89a?", "image/gif"),
             BodyItem(jpeg, "image/jpeg")]
    first, bad, third = (await pool.run(version, Config(batch=3, vcpu=1), items)).results
    assert isinstance(bad, ItemFailure) and bad.status == 400
    expected = imagenet_tensor(decode_image(jpeg))[np.newaxis]  # squeezenet's own preprocess
    for result in (first, third):
        assert isinstance(result, TensorResult)
        np.testing.assert_allclose(result.tensors["data_0"], expected, rtol=0, atol=2e-6)


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("directory", [FUNCTIONS / "label", WORKFLOWS / "ensemble" / "vote"],
                         ids=["label", "vote"])
async def test_label_and_vote_in_a_sandbox(
    pool: SandboxPool, tmp_path: Path, directory: Path
) -> None:
    version = await deploy(pool, tmp_path, directory)
    assert version.batched and version.has_postprocess and not version.has_preprocess
    tensors = v2_tensors(directory / "sample.json")
    flat = np.mean([t.reshape(1000) for t in tensors.values()], axis=0)
    best = np.argsort(-flat, kind="stable")[:5].tolist()
    items = [TensorItem(tensors), TensorItem(tensors)]
    for result in (await pool.run(version, Config(batch=2, vcpu=1), items)).results:
        top5 = body_of(result)["top5"]
        assert isinstance(top5, list)
        assert [c["index"] for c in top5] == best
        assert top5[0]["label"] == f"class {best[0]}"
        assert top5[0]["probability"] == pytest.approx(float(flat[best[0]]), rel=1e-5)


@pytest.mark.usefixtures("built")
async def test_segment_and_composite_in_sandboxes(pool: SandboxPool, tmp_path: Path) -> None:
    segment = await deploy(pool, tmp_path / "s", WORKFLOWS / "cutout" / "segment")
    assert segment.outputs == (TensorSpec("mask", "FP32", (-1, 1, 224, 224)),)
    picture = v2_tensors(WORKFLOWS / "cutout" / "segment" / "sample.json")["data_0"]
    (result,) = (await pool.run(segment, Config(batch=1, vcpu=1),
                                [TensorItem({"data_0": picture})])).results
    assert isinstance(result, TensorResult)
    mask = result.tensors["mask"]
    assert mask.shape == (1, 1, 224, 224)

    composite = await deploy(pool, tmp_path / "c", WORKFLOWS / "cutout" / "composite")
    assert [s.name for s in composite.inputs] == ["image", "mask"]
    (answer,) = (await pool.run(composite, Config(batch=1, vcpu=1),
                                [TensorItem({"image": picture, "mask": mask})])).results
    body = body_of(answer)
    assert body["coverage"] == pytest.approx(float(mask.mean()), rel=1e-5)
    assert 0.3 < float(body["coverage"]) < 0.6  # type: ignore[arg-type]
    thumbnail = body["thumbnail"]
    assert isinstance(thumbnail, dict)
    assert (thumbnail["width"], thumbnail["height"], thumbnail["format"]) == (56, 56, "png")
