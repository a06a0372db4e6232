"""The one onnxruntime importer: inspection in V2 terms, thread settings, provider choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faasd.runtime.onnx import (
    ModelLoadError,
    OnnxModel,
    RunError,
    choose_providers,
    session_options,
)

from .conftest import reference_output, write_tiny_model


def test_inspection_reports_v2_specs_and_dynamic_batch(tmp_path: Path) -> None:
    model = OnnxModel.load(write_tiny_model(tmp_path / "m.onnx"), vcpu=2)
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("x", "FP32", (-1, 16))]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [("y", "FP32", (-1, 16))]
    assert model.batched


def test_fixed_first_dimension_is_not_batched(tmp_path: Path) -> None:
    model = OnnxModel.load(write_tiny_model(tmp_path / "m.onnx", batch_dim=1))
    assert model.inputs[0].shape == (1, 16)
    assert not model.batched


def test_run_matches_numpy_and_bad_inputs_raise_run_error(tmp_path: Path) -> None:
    model = OnnxModel.load(write_tiny_model(tmp_path / "m.onnx"))
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    np.testing.assert_allclose(model.run({"x": x})["y"], reference_output(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RunError, match="x"):
        model.run({"x": x[:, :3]})


def test_corrupt_model_raises_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelLoadError):
        OnnxModel.load(path)


def test_threads_follow_vcpu_and_spinning_is_off() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize(
    ("vgpu", "available", "expected"),
    [
        (0, ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            2,
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (2, ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ],
)
def test_auto_provider_uses_cuda_only_when_asked_and_present(
    vgpu: int, available: list[str], expected: list[str]
) -> None:
    assert choose_providers(vgpu, available) == expected
