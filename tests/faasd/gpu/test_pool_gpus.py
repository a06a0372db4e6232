"""The sandbox pool with GPU slices: eviction for a slice, and the real path without CUDA."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from esg.model import Config
from faasd.errors import GpuUnavailable
from faasd.gpu.service import GpuService
from faasd.gpu.settings import GpuSettings
from faasd.sandbox.items import TensorItem, TensorResult
from faasd.sandbox.pool import SandboxPool
from tests.faasd.sandbox.conftest import make_function, make_version

pytestmark = pytest.mark.slow

ROW = TensorItem({"x": np.ones((1, 16), dtype=np.float32)})


@pytest.fixture
async def mixed(tmp_path: Path) -> AsyncIterator[tuple[GpuService, SandboxPool]]:
    async with GpuService(GpuSettings(fake="h100-80gb-mig-mixed", health_interval_s=3600),
                          tmp_path) as gpus, SandboxPool(
        state_dir=tmp_path / "state", cgroup_parent=f"faasd-test-{uuid.uuid4().hex[:8]}",
        max_sandboxes=8, gpu=gpus,
    ) as pool:
        yield gpus, pool


async def until_unbound(gpus: GpuService, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while gpus.bound():
            await asyncio.sleep(0.01)


async def test_an_idle_sandbox_gives_up_its_slice_to_another_function(
    mixed: tuple[GpuService, SandboxPool], tmp_path: Path
) -> None:
    gpus, pool = mixed
    first = make_version(make_function(tmp_path / "fn", "first"), vgpu=2)
    second = make_version(make_function(tmp_path / "fn", "second"), vgpu=2)
    a = await pool.run(first, Config(1, 1, 2), [ROW])
    assert isinstance(a.results[0], TensorResult) and a.device.startswith("cpu (fake MIG-")
    ((_, function, pid, held),) = gpus.bound()
    assert (function, pid, held.profile) == ("first", a.sandbox_pid, "2g.20gb")
    b = await pool.run(second, Config(1, 1, 2), [ROW])  # the only 2g: first's idle sandbox goes
    assert b.device == a.device and b.sandbox_pid != a.sandbox_pid
    assert [(f, p) for _, f, p, _ in gpus.bound()] == [("second", b.sandbox_pid)]
    assert pool.stats().alive == {"second": 1}


SLOW_HANDLER = """
import time

import numpy as np


def preprocess(body, content_type):
    time.sleep(float(body.decode()))
    return {"x": np.ones((1, 16), dtype=np.float32)}
"""


async def test_a_call_waits_for_its_size_and_leaves_other_sizes_warm(
    mixed: tuple[GpuService, SandboxPool], tmp_path: Path
) -> None:
    from faasd.sandbox.items import BodyItem

    gpus, pool = mixed
    small = make_version(make_function(tmp_path / "fn", "small"), vgpu=1)
    busy = make_version(make_function(tmp_path / "fn", "busy", SLOW_HANDLER), vgpu=2)
    late = make_version(make_function(tmp_path / "fn", "late"), vgpu=2)
    warm = await pool.run(small, Config(1, 1, 1), [ROW])  # idle afterwards, holding a 1g
    holding = asyncio.create_task(
        pool.run(busy, Config(1, 1, 2), [BodyItem(b"1.0", "text/plain")]))
    async with asyncio.timeout(10):
        while not any(f == "busy" for _, f, _, _ in gpus.bound()):
            await asyncio.sleep(0.01)
    got = await pool.run(late, Config(1, 1, 2), [ROW])  # waits for the 2g, then evicts busy's
    assert (await holding).results and got.device == (await holding).device
    by_function = {f: p for _, f, p, _ in gpus.bound()}
    assert by_function == {"small": warm.sandbox_pid, "late": got.sandbox_pid}


async def test_a_real_slice_without_cuda_fails_the_start_with_gpu_unavailable(
    mixed: tuple[GpuService, SandboxPool], tmp_path: Path
) -> None:
    """The real binding on this machine, whose onnxruntime has no CUDA provider: onnxruntime
    would silently run on the CPU; the sandbox refuses to start instead."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # pragma: no cover
        pytest.skip("this host's onnxruntime has CUDA")
    gpus, pool = mixed
    gpus.fake = False  # bind as on real hardware: the sandbox must get CUDA
    version = make_version(make_function(tmp_path / "fn", "real"), vgpu=1)
    with pytest.raises(GpuUnavailable, match="gpu_unavailable: onnxruntime runs this model on "
                       r"\['CPUExecutionProvider'\] instead of CUDA") as failed:
        await pool.run(version, Config(1, 1, 1), [ROW])
    assert failed.value.extra["code"] == "gpu_unavailable"
    await until_unbound(gpus)  # the slice came back with the failed sandbox
    assert gpus.table.free_units(0) == 7
