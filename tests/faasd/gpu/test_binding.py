"""The environment, onnxruntime options and device label of a sandbox bound to a slice."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.gpu.binding import cuda_options, device_label, sandbox_env, thread_percentage
from faasd.gpu.discovery import discover
from faasd.gpu.fake import machine
from faasd.gpu.settings import GpuSettings, parse_gpu
from faasd.gpu.slices import Slice, SliceTable, resolve_modes


def slice_of(name: str, units: int, mode: str = "auto") -> Slice:
    slots, _ = resolve_modes(discover(machine(name)), mode)
    found = SliceTable(slots).acquire("s", units)
    assert found is not None
    return found


def test_a_mig_sandbox_sees_exactly_its_instance() -> None:
    s = slice_of("a100-40gb-mig", 1)
    env = sandbox_env(s)
    assert env == {"CUDA_VISIBLE_DEVICES": s.device_uuid}
    assert env["CUDA_VISIBLE_DEVICES"].startswith("MIG-") and "," not in env["CUDA_VISIBLE_DEVICES"]
    assert device_label(s) == f"cuda:{s.device_uuid}"
    assert device_label(s, fake=True) == f"cpu (fake {s.device_uuid})"


def test_an_mps_sandbox_gets_its_share_and_pinned_memory() -> None:
    s = slice_of("a100-40gb-mps", 3)
    env = sandbox_env(s, Path("/run/faasd/mps"))
    assert env == {
        "CUDA_VISIBLE_DEVICES": s.gpu_uuid,
        "CUDA_MPS_PIPE_DIRECTORY": "/run/faasd/mps",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "43",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=17554M",
    }
    assert device_label(s) == "cuda:0 (mps 43%)"
    assert device_label(s, fake=True) == "cpu (fake cuda:0 (mps 43%))"


def test_thread_percentages_of_the_mig_sizes() -> None:
    assert [thread_percentage(g) for g in (1, 2, 3, 4, 7)] == [14, 29, 43, 57, 100]


def test_a_timesliced_sandbox_gets_the_gpu_only() -> None:
    s = slice_of("a100-40gb-mps", 2, mode="timeslice")
    assert sandbox_env(s) == {"CUDA_VISIBLE_DEVICES": s.gpu_uuid}
    assert device_label(s) == "cuda:0 (timeslice 2/7)"
    assert device_label(None) == "cpu"


def test_cuda_options_stay_below_the_slice_memory() -> None:
    s = slice_of("h100-80gb-mig-mixed", 2)
    options = cuda_options(s, GpuSettings(cudnn_conv_algo_search="EXHAUSTIVE"))
    assert options["device_id"] == 0
    assert options["gpu_mem_limit"] == int(0.8 * 20480 * 2**20) < s.memory_mb * 2**20
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_gpu_settings_parse_and_name_the_fix() -> None:
    assert parse_gpu(None) == GpuSettings()
    got = parse_gpu({"mode": "mig", "memory_fraction": "0.5"}, {"FAASD_GPU_FAKE": "no-gpu"})
    assert (got.mode, got.memory_fraction, got.fake) == ("mig", 0.5, "no-gpu")
    assert parse_gpu({"mode": "mig"}, {"FAASD_GPU_MODE": "off"}).mode == "off"
    with pytest.raises(ValueError, match=r"unknown gpu key.*known: arena_extend_strategy"):
        parse_gpu({"mdoe": "mig"})
    with pytest.raises(ValueError, match=r"gpu\.mode must be one of auto, mig"):
        parse_gpu({"mode": "vgpu"})
    with pytest.raises(ValueError, match="memory_fraction must be in"):
        parse_gpu({"memory_fraction": 2})
    with pytest.raises(ValueError, match="must be a number"):
        parse_gpu({"health_interval_s": True})
