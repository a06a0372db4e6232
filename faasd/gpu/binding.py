"""Binding a sandbox to its slice: the environment it starts with, onnxruntime's CUDA
options, and the label its answers carry. Pure.

The environment is applied by the worker right after the fork, before onnxruntime creates a
session (CUDA reads it once, when it initialises; the fork server itself never initialises
CUDA). One device per sandbox, always CUDA ordinal 0 inside it:

- MIG: `CUDA_VISIBLE_DEVICES=MIG-<uuid>` (a CUDA process can enumerate one MIG device only).
- MPS: `CUDA_VISIBLE_DEVICES=GPU-<uuid>`, `CUDA_MPS_PIPE_DIRECTORY` (where the control daemon
  listens), `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` = round(100·g/7) (14, 29, 43, 57, 71, 86, 100)
  and `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=<MB>M`, the slice's memory (the function's
  `gpu_memory_mb`, else the GPU's memory · g/7; reconstructed: the MPS docs leave the split to
  the operator).
- timeslice: `CUDA_VISIBLE_DEVICES=GPU-<uuid>` only; the units are a concurrency cap and memory
  is held in check by onnxruntime's arena limit alone (no isolation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faasd.gpu.discovery import GPU_UNITS
from faasd.gpu.settings import GpuSettings
from faasd.gpu.slices import Slice


def thread_percentage(units: int) -> int:
    return round(100 * units / GPU_UNITS)


def sandbox_env(slice_: Slice, mps_pipe_dir: Path | None = None) -> dict[str, str]:
    """The variables a sandbox bound to `slice_` starts with (see the module docstring)."""
    env = {"CUDA_VISIBLE_DEVICES": slice_.device_uuid}
    if slice_.mode == "mps":
        if mps_pipe_dir is not None:
            env["CUDA_MPS_PIPE_DIRECTORY"] = str(mps_pipe_dir)
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(thread_percentage(slice_.units))
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={slice_.memory_mb}M"
    return env


def cuda_options(slice_: Slice, settings: GpuSettings) -> dict[str, Any]:
    """onnxruntime's CUDA execution provider options for a sandbox on `slice_`: device 0
    (the only one it sees), the arena capped below the slice's memory (the arena is not all
    a session allocates), and the faasd.yaml choices."""
    return {
        "device_id": 0,
        "gpu_mem_limit": int(settings.memory_fraction * slice_.memory_mb * 2**20),
        "arena_extend_strategy": settings.arena_extend_strategy,
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
        "do_copy_in_default_stream": True,
    }


def device_label(slice_: Slice | None, fake: bool = False) -> str:
    """Where a sandbox runs, as `X-Faasd-Device` says: `cpu`, `cuda:MIG-…`,
    `cuda:0 (mps 43%)`, `cuda:0 (timeslice 3/7)`; under the fake NVML the sandbox runs on the
    CPU and says which slice it was bound to: `cpu (fake MIG-…)`."""
    if slice_ is None:
        return "cpu"
    if slice_.mode == "mig":
        where = slice_.device_uuid
    elif slice_.mode == "mps":
        where = f"cuda:{slice_.gpu_index} (mps {thread_percentage(slice_.units)}%)"
    else:
        where = f"cuda:{slice_.gpu_index} (timeslice {slice_.units}/{GPU_UNITS})"
    if fake:
        return f"cpu (fake {where})"
    return f"cuda:{where}" if slice_.mode == "mig" else where
