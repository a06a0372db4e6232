"""The GPU hardware check: discovery, then squeezenet and resnet50 on every slice size, cold and
warm, against the same models on the CPU. To run on a machine with an NVIDIA GPU.

What it does, with the daemon's own parts (GpuService, SandboxPool) and no HTTP in the way:

1. discovery: the GPUs, MIG instances or MPS / time-slicing mode NVML reports (`gpu.mode` auto,
   or `--mode`); no GPU unit at all ends the check (exit 2) with what NVML said;
2. for each model and each slice size the node can give (MIG: the sizes of its instances; MPS /
   time-slicing: 1, 2, 3, 4, 7 units), a sandbox bound to that slice: the cold start (from no
   sandbox to the first answer: fork, binding, CUDA session, first run) and then `--calls` warm
   calls at batch 1, 4 and 8 (the round trip of `pool.run` and the sandbox's own run time);
   each answer's device label must be a CUDA one (`cuda:MIG-…`, `cuda:0 (mps 43%)`), and NVML
   must list the sandbox's pid among the slice's compute processes;
3. the same models on the CPU (1 vCPU) at the same batches.

    .venv/bin/pip install -e '.[gpu]'      # onnxruntime-gpu (CUDA 12), cupy-cuda12x, nvidia-ml-py
    .venv/bin/python benchmarks/gpu_check.py [--calls 50] [--mode auto] [--markdown]

Prints a JSON report (`--markdown`: the table for docs/benchmarks.md). `--fake NAME` runs the
same check on a fake NVML machine, where sandboxes run on the CPU: a dry run of the script's
plumbing, not a measurement, and said so in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from faasd_bench.stats import summarize

from esg.model import Config
from faasd.functions.spec import FunctionSettings, FunctionVersion
from faasd.gpu.service import GpuService
from faasd.gpu.settings import GpuSettings
from faasd.runtime.onnx import OnnxModel
from faasd.sandbox.items import TensorItem
from faasd.sandbox.pool import SandboxPool

REPO = Path(__file__).resolve().parents[1]
MODELS = ("squeezenet", "resnet50")
BATCHES = (1, 4, 8)
SHARE_SIZES = (1, 2, 3, 4, 7)


def _version(model: str, vgpu: int, batch: int) -> FunctionVersion:
    directory = REPO / "functions" / model
    settings = FunctionSettings(max_batch_size=8, vcpu=1, vgpu=vgpu, memory_mb=4096,
                                timeout_s=120, max_instances=1)
    # a name per run, so that every (model, slice, batch) starts cold in its own sandbox
    name = f"{model}-g{vgpu}-b{batch}-{uuid.uuid4().hex[:6]}"
    return FunctionVersion(name, 1, directory, directory / "model.onnx", settings, batched=True)


def _items(model: str, batch: int) -> list[TensorItem]:
    spec = OnnxModel.load(REPO / "functions" / model / "model.onnx").inputs[0]
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    rng = np.random.default_rng(1)
    return [TensorItem({spec.name: rng.random(shape, np.float32)}) for _ in range(batch)]


def _sizes(gpus: GpuService) -> list[int]:
    sizes = gpus.sizes()
    if all(g.mode == "mig" for g in gpus.table.gpus):
        return sorted(sizes)
    return [s for s in SHARE_SIZES if s in sizes]


def _on_gpu(gpus: GpuService, pid: int) -> bool | None:
    """Whether NVML lists `pid` on the slice it is bound to (None: cannot tell)."""
    nvml = gpus.nvml
    for _, _, bound_pid, held in gpus.bound():
        if bound_pid != pid:
            continue
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(held.device_uuid)
            pids = {int(p.pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        except nvml.NVMLError:
            return None
        return pid in pids
    return None


async def _one(pool: SandboxPool, gpus: GpuService, model: str, vgpu: int, batch: int,
               calls: int) -> dict[str, Any]:
    version = _version(model, vgpu, batch)
    config = Config(batch, 1, vgpu)
    items = _items(model, batch)
    started = time.perf_counter()
    first = await pool.run(version, config, items)
    cold_s = time.perf_counter() - started
    round_trip_s, exec_s = [], []
    for _ in range(calls):
        started = time.perf_counter()
        execution = await pool.run(version, config, items)
        round_trip_s.append(time.perf_counter() - started)
        exec_s.append(execution.exec_s)
    row = {
        "model": model, "vgpu": vgpu, "batch": batch, "device": first.device,
        "cold_start_ms": round(cold_s * 1e3, 1),
        "round_trip": summarize(round_trip_s).as_dict() if calls else None,
        "exec": summarize(exec_s).as_dict() if calls else None,
        "nvml_lists_the_sandbox": _on_gpu(gpus, first.sandbox_pid) if vgpu else None,
    }
    await pool.retire(version.name)
    return row


async def check(calls: int, mode: str, fake: str | None, models: list[str],
                batches: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="faasd-gpu-check-") as tmp:
        state = Path(tmp)
        settings = GpuSettings(mode=mode, fake=fake, health_interval_s=3600)
        async with GpuService(settings, state) as gpus:
            report: dict[str, Any] = {
                "fake": fake, "summary": gpus.summary(), "driver": gpus.inventory.driver,
                "problems": list(gpus.inventory.problems), "gpus": gpus.describe(), "runs": [],
            }
            if not gpus.table.gpus:
                return report
            async with SandboxPool(state_dir=state / "pool", cgroup_parent=f"faasd-gpu-check-"
                                   f"{uuid.uuid4().hex[:6]}", max_sandboxes=4, gpu=gpus) as pool:
                for model in models:
                    for vgpu in [0, *_sizes(gpus)]:
                        for batch in batches:
                            row = await _one(pool, gpus, model, vgpu, batch, calls)
                            report["runs"].append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
            return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU check: {report['summary']}" + (" (FAKE: sandboxes ran on the CPU)"
                                                  if report["fake"] else ""), "",
             "| model | vGPU | batch | device | cold start ms | round trip p50 / p90 ms | "
             "run p50 ms |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        rt, ex = r["round_trip"] or {}, r["exec"] or {}
        lines.append(f"| {r['model']} | {r['vgpu']} | {r['batch']} | {r['device']} | "
                     f"{r['cold_start_ms']} | {rt.get('p50_ms', '-')} / {rt.get('p90_ms', '-')}"
                     f" | {ex.get('p50_ms', '-')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="warm calls per configuration")
    parser.add_argument("--mode", default="auto", help="gpu.mode: auto, mig, mps, timeslice")
    parser.add_argument("--fake", help="a fake NVML machine: a dry run, not a measurement")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(check(args.calls, args.mode, args.fake, args.models.split(","),
                               [int(b) for b in args.batches.split(",")]))
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))
    if not report["gpus"]:
        print(f"no GPU units: {report['summary']}; {report['problems']}", file=sys.stderr)
        return 2
    if not report["fake"]:
        on_cpu = [r for r in report["runs"] if r["vgpu"] and not r["device"].startswith("cuda")]
        if on_cpu:
            print(f"{len(on_cpu)} GPU configuration(s) did not run on CUDA", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
