"""Warm overhead and cold start of the sandbox pool, against in-process onnxruntime.

Measures, on this machine, with no HTTP in the way:

- warm overhead: `pool.run` of one batch-1 call in a warm sandbox minus `session.run` of the
  same input in this process, with the sandbox's settings (1 intra-op thread, no spinning), for
  squeezenet (a 602,112-byte input) and for a tiny [1,16] model (where the model costs ~µs and
  the difference is all framing, socket and scheduling), the two interleaved call by call;
- the hop alone, steady: `pool.run` back to back in blocks of 20 (as a lone client's calls
  come), rotating over four models: tiny, `wide` (squeezenet's input, a 13 µs run), `long` (a
  small input, a run about squeezenet's length) and squeezenet. For each, the round trip minus
  the sandbox's own execution time, and the CPU this process (the daemon's side) spends a call;
  the spread of the blocks' medians shows how much the machine moved during the run;
- cold start: a call for a version that has no sandbox, from the call to its answer (fork from
  the warm fork server, cgroups, session creation, first run), repeated with new versions;
- memory: resident set of the fork server, and of one warm sandbox (all of it, and the part
  that is its own rather than shared copy-on-write with the fork server).

squeezenet is the ImageNet architecture shipped inside the onnx package
(`onnx/backend/test/data/light/light_squeezenet.onnx`: real compute, constant weights), rewritten
here with a dynamic batch dimension.

Usage: python benchmarks/sandbox_roundtrip.py [--calls 300] [--cold 10] [--loop uvloop|asyncio]
Prints a JSON report. The machine is shared and its speed drifts: run it twice and compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from faasd_bench.models import build_long, build_tiny, build_wide

from esg.model import Config
from faasd.functions.spec import FunctionSettings, FunctionVersion
from faasd.runtime.onnx import OnnxModel
from faasd.sandbox.items import TensorItem
from faasd.sandbox.pool import SandboxPool

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def build_squeezenet(directory: Path) -> Path:
    model = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    del model.graph.value_info[:]
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    return directory


def version_of(directory: Path, number: int = 1) -> FunctionVersion:
    return FunctionVersion(
        name=directory.name,
        version=number,
        directory=directory,
        model_path=directory / "model.onnx",
        settings=FunctionSettings(max_batch_size=1, vcpu=1, memory_mb=1024, keep_alive_s=600),
    )


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {"p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3), "n": len(ordered)}


def private_mb(pid: int) -> float:
    """Memory only this process holds (not shared copy-on-write with the fork server)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return round((fields["Private_Clean"] + fields["Private_Dirty"]) / 1024, 1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def warm(
    pool: SandboxPool, directory: Path, input_name: str, shape: tuple[int, ...], calls: int
) -> dict[str, Any]:
    """In-process and pooled calls interleaved, so that the machine's drift hits both alike."""
    version = version_of(directory)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    model = OnnxModel.load(directory / "model.onnx", vcpu=1)
    items = [TensorItem({input_name: x})]
    local: list[float] = []
    remote: list[float] = []
    outside: list[float] = []  # round trip minus the sandbox's own execution time
    for i in range(calls + 10):
        started = time.perf_counter()
        model.run({input_name: x})
        local_s = time.perf_counter() - started
        started = time.perf_counter()
        execution = await pool.run(version, Config(1, 1), items)
        remote_s = time.perf_counter() - started
        if i >= 10:  # the first calls warm caches and onnxruntime's arenas
            local.append(local_s)
            remote.append(remote_s)
            outside.append(remote_s - execution.exec_s)
    in_process, pooled = percentiles_ms(local), percentiles_ms(remote)
    return {
        "input_bytes": x.nbytes,
        "in_process_ms": in_process,
        "pool_run_ms": pooled,
        "overhead_ms": {
            "p50": round(pooled["p50"] - in_process["p50"], 3),
            "p99": round(pooled["p99"] - in_process["p99"], 3),
        },
        "round_trip_minus_sandbox_exec_ms": percentiles_ms(outside),
        "sandbox_rss_mb": rss_mb(execution.sandbox_pid),
        "sandbox_private_mb": private_mb(execution.sandbox_pid),
    }


async def cold(
    pool: SandboxPool, directory: Path, input_name: str, shape: tuple[int, ...], repeats: int
) -> dict[str, Any]:
    """Calls for versions that have no sandbox yet; the pool is otherwise idle."""
    x = np.zeros(shape, dtype=np.float32)
    samples = []
    for number in range(100, 100 + repeats):
        version = version_of(directory, number)
        started = time.perf_counter()
        execution = await pool.run(version, Config(1, 1), [TensorItem({input_name: x})])
        samples.append(time.perf_counter() - started)
        assert execution.cold_start
        await pool.retire(directory.name)
        await asyncio.sleep(0.2)  # idle between starts, as a first call after a quiet spell
    return {
        "idle_to_first_answer_ms": percentiles_ms(samples),
        "max_ms": round(max(samples) * 1e3, 1),
    }


async def steady(pool: SandboxPool, directories: list[Path], calls: int) -> dict[str, Any]:
    """Each model's calls back to back in blocks of 20, the models taking turns block by block,
    so that the machine's drift hits all of them alike."""
    block = 20
    setups = []
    for directory in directories:
        spec = OnnxModel.load(directory / "model.onnx", vcpu=1).inputs[0]
        shape = tuple(1 if size < 0 else size for size in spec.shape)
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        version, items = version_of(directory), [TensorItem({spec.name: x})]
        for _ in range(block):  # warm the sandbox, its arenas and the area
            await pool.run(version, Config(1, 1), items)
        setups.append((directory.name, version, items))
    outside: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    executed: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    block_medians: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    for round_ in range(max(1, calls // block)):
        turn = round_ % len(setups)  # each model follows each other equally often
        for name, version, items in setups[turn:] + setups[:turn]:
            cpu_started = time.process_time()
            samples = []
            for _ in range(block):
                started = time.perf_counter()
                execution = await pool.run(version, Config(1, 1), items)
                samples.append(time.perf_counter() - started - execution.exec_s)
                executed[name].append(execution.exec_s)
            cpu[name].append((time.process_time() - cpu_started) / block)
            outside[name].extend(samples)
            block_medians[name].append(float(np.median(samples)))
    return {
        name: {
            "round_trip_minus_sandbox_exec_ms": percentiles_ms(outside[name]),
            "blocks_p50_ms_min_max": [
                round(min(block_medians[name]) * 1e3, 3),
                round(max(block_medians[name]) * 1e3, 3),
            ],
            "sandbox_exec_ms_p50": percentiles_ms(executed[name])["p50"],
            "daemon_side_cpu_ms_per_call": round(float(np.mean(cpu[name])) * 1e3, 3),
        }
        for name, _, _ in setups
    }


async def main(calls: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        squeezenet = build_squeezenet(root / "squeezenet")
        tiny = build_tiny(root / "tiny" / "model.onnx").parent
        wide = build_wide(root / "wide" / "model.onnx").parent
        long = build_long(root / "long" / "model.onnx").parent
        async with SandboxPool(
            state_dir=root / "state", cgroup_parent=f"faasd-bench-{uuid.uuid4().hex[:6]}"
        ) as pool:
            report: dict[str, Any] = {
                "confinement": pool.backend.value,
                "cpus": len(os.sched_getaffinity(0)),
                "fork_server_rss_mb": rss_mb(pool.fork_server_pid or 0),
            }
            image = (1, 3, 224, 224)
            report["cold_start_squeezenet"] = await cold(pool, squeezenet, "data_0", image, repeats)
            report["warm_tiny"] = await warm(pool, tiny, "x", (1, 16), calls)
            report["warm_squeezenet"] = await warm(pool, squeezenet, "data_0", image, calls)
            report["steady_hop"] = await steady(pool, [tiny, wide, long, squeezenet], calls)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(main(args.calls, args.cold))
    else:
        result = asyncio.run(main(args.calls, args.cold))
    result["loop"] = args.loop
    print(json.dumps(result, indent=2))
