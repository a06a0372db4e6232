"""The CUDA side of the onnxruntime wrapper that runs here too: the I/O-binding path (taken by
CUDA sessions; onnxruntime's CPU provider binds the same way), the provider list, and which
run errors mean the device failed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from faasd.runtime.onnx import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxModel,
    RunError,
    is_device_failure,
    preload_cuda,
    providers_for,
)
from tests.faasd.sandbox.conftest import reference_output, write_tiny_model


def test_the_io_binding_run_answers_as_the_plain_one(tmp_path: Path) -> None:
    plain = OnnxModel.load(write_tiny_model(tmp_path / "model.onnx"))
    assert not plain.io_binding  # a CPU session runs plainly
    bound = dataclasses.replace(plain, io_binding=True)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(bound.run({"x": x})["y"], reference_output(x), rtol=1e-5)
    np.testing.assert_array_equal(bound.run({"x": x})["y"], plain.run({"x": x})["y"])
    with pytest.raises(RunError):
        bound.run({"x": np.ones((2, 3), dtype=np.float32)})


def test_preloading_cuda_libraries_does_nothing_without_a_cuda_build() -> None:
    import onnxruntime

    if CUDA_PROVIDER in onnxruntime.get_available_providers():  # pragma: no cover - GPU build
        pytest.skip("a CUDA build: preload_dlls loads the libraries")
    assert preload_cuda() is False


def test_providers_carry_the_cuda_options_only_when_cuda_is_chosen() -> None:
    import onnxruntime

    options = {"device_id": 0, "gpu_mem_limit": 1 << 30}
    if CUDA_PROVIDER in onnxruntime.get_available_providers():  # pragma: no cover - GPU build
        assert providers_for(1, options) == [(CUDA_PROVIDER, options), CPU_PROVIDER]
    else:
        assert providers_for(1, options) == [CPU_PROVIDER]
    assert providers_for(0, options) == [CPU_PROVIDER]


@pytest.mark.parametrize(("message", "device"), [
    ("CUDA failure 700: an illegal memory access was encountered ; GPU=0", True),
    ("CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR", True),
    ("CUBLAS failure 13: CUBLAS_STATUS_EXECUTION_FAILED", True),
    ("Got invalid dimensions for input: x for the following indices", False),
    ("Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))", False),
])
def test_device_failures_are_told_from_bad_inputs(message: str, device: bool) -> None:
    assert is_device_failure(message) is device
