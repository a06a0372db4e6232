"""The example functions deployed as the daemon deploys them: registry.stage -> a real sandbox's
inspect -> registry.commit, then calls through real sandboxes (raw bodies and tensors)."""

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
from faasd.sandbox.items import BodyItem, BodyResult, ItemFailure, TensorItem, TensorResult
from faasd.sandbox.pool import SandboxPool

from .conftest import FUNCTIONS

pytestmark = pytest.mark.slow


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(state_dir=tmp_path / "pool", max_sandboxes=4,
                           cgroup_parent=f"faasd-test-{uuid.uuid4().hex[:8]}") as live:
        yield live


async def deploy(pool: SandboxPool, registry: Registry, name: str) -> FunctionVersion:
    staged = registry.stage(FUNCTIONS / name)
    try:
        info = await pool.inspect(staged)
    except BaseException:
        registry.discard(staged)
        raise
    return registry.commit(staged, info)


def body_of(result: object) -> dict[str, object]:
    assert isinstance(result, BodyResult), result
    assert result.content_type == "application/json"
    answer: dict[str, object] = json.loads(result.body)
    return answer


async def test_digits_in_a_sandbox(models: Path, pool: SandboxPool, tmp_path: Path) -> None:
    if models != FUNCTIONS:
        pytest.skip("the examples' models are not built under functions/")
    registry = Registry(tmp_path / "state", FunctionSettings())
    version = await deploy(pool, registry, "digits")
    assert version.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert version.outputs == (TensorSpec("probabilities", "FP32", (-1, 10)),)
    assert version.batched and version.has_preprocess and version.has_postprocess
    assert Registry(tmp_path / "state", FunctionSettings()).get("digits") == version

    png = (FUNCTIONS / "digits" / "sample.png").read_bytes()
    items = [BodyItem(png, "image/png"), BodyItem(b"not a picture", "image/png"),
             BodyItem(png, "image/png")]
    execution = await pool.run(version, Config(batch=3, vcpu=1), items)
    first, bad, third = execution.results
    assert body_of(first)["label"] == 3 and body_of(third)["label"] == 3
    assert isinstance(bad, ItemFailure) and bad.status == 400
    assert "cannot read the body as a picture" in bad.message

    # Tensors skip preprocess: sample.json's digit as a tensor. By default the handler's
    # postprocess shapes the answer (the OpenFaaS path) ...
    request = json.loads((FUNCTIONS / "digits" / "sample.json").read_text())
    x = np.asarray(request["inputs"][0]["data"], dtype=np.float32).reshape(1, 64)
    execution = await pool.run(version, Config(batch=1, vcpu=1), [TensorItem({"input": x})])
    (result,) = execution.results
    answer = body_of(result)
    assert answer["label"] == 3
    # ... and without postprocess the model's own tensor comes back (the V2 path).
    execution = await pool.run(
        version, Config(batch=1, vcpu=1), [TensorItem({"input": x})], postprocess=False
    )
    (raw,) = execution.results
    assert isinstance(raw, TensorResult) and sorted(raw.tensors) == ["probabilities"]
    probabilities = raw.tensors["probabilities"]
    assert probabilities.shape == (1, 10) and int(np.argmax(probabilities)) == 3
    np.testing.assert_allclose(probabilities[0], answer["probabilities"], rtol=1e-6)


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
async def test_imagenet_examples_in_a_sandbox(
    models: Path, pool: SandboxPool, tmp_path: Path, name: str
) -> None:
    if models != FUNCTIONS:
        pytest.skip("the examples' models are not built under functions/")
    registry = Registry(tmp_path / "state", FunctionSettings())
    version = await deploy(pool, registry, name)
    assert version.inputs == (TensorSpec("data_0", "FP32", (-1, 3, 224, 224)),)
    assert version.batched
    jpeg = (FUNCTIONS / name / "sample.jpg").read_bytes()
    execution = await pool.run(version, Config(batch=2, vcpu=1),
                               [BodyItem(jpeg, "image/jpeg"), BodyItem(jpeg, "image/jpeg")])
    for result in execution.results:
        top5 = body_of(result)["top5"]
        assert isinstance(top5, list) and len(top5) == 5
        assert top5[0] == {"label": "class 0", "index": 0, "probability": pytest.approx(0.001)}
