"""The real path, on a machine with an NVIDIA GPU only (`pytest -m gpu`; `make test` skips it).

Needs the gpu extra (onnxruntime-gpu, nvidia-ml-py) and MIG instances, an MPS server or a plain
GPU. Every sandbox bound to a slice must run its session on CUDA, and NVML must list its pid.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from esg.model import Config
from faasd.gpu.discovery import discover
from faasd.gpu.service import GpuService
from faasd.gpu.settings import GpuSettings
from faasd.sandbox.items import TensorItem, TensorResult
from faasd.sandbox.pool import SandboxPool
from tests.faasd.sandbox.conftest import make_function, make_version, reference_output

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _nvml() -> Any:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVML here: {exc}")
    if pynvml.nvmlDeviceGetCount() == 0:
        pytest.skip("NVML sees no GPU")
    return pynvml


def test_discovery_on_the_real_driver() -> None:
    inventory = discover(_nvml())
    assert inventory.gpus, inventory.problems
    for gpu in inventory.gpus:
        assert gpu.uuid.startswith("GPU-") and gpu.memory_mb > 0
        for instance in gpu.instances:
            assert instance.uuid.startswith("MIG-") and instance.units in (1, 2, 3, 4, 7)


async def test_a_sandbox_on_every_slice_size_runs_on_cuda(tmp_path: Path) -> None:
    nvml = _nvml()
    async with GpuService(GpuSettings(health_interval_s=3600), tmp_path) as gpus, SandboxPool(
        state_dir=tmp_path / "state", cgroup_parent=f"faasd-test-{uuid.uuid4().hex[:8]}",
        gpu=gpus,
    ) as pool:
        assert gpus.sizes(), gpus.summary()
        x = np.ones((1, 16), dtype=np.float32)
        for units in sorted(gpus.sizes()):
            version = make_version(make_function(tmp_path / "fn", f"tiny{units}"), vgpu=units)
            execution = await pool.run(version, Config(1, 1, units), [TensorItem({"x": x})])
            result = execution.results[0]
            assert isinstance(result, TensorResult)
            np.testing.assert_allclose(result.tensors["y"], reference_output(x), rtol=1e-4)
            assert execution.device.startswith("cuda"), execution.device
            ((_, _, pid, held),) = [b for b in gpus.bound() if b[2] == execution.sandbox_pid]
            handle = nvml.nvmlDeviceGetHandleByUUID(held.device_uuid)
            pids = {p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)}
            assert pid in pids
            await pool.retire(version.name)
