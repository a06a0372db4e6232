"""What confining sandboxes with bubblewrap costs: cold start and warm call, on vs off.

Two sandbox pools side by side, one with `namespaces="on"` (each function's fork server in a
bubblewrap box of its own, each worker with a uid of its own: faasd.sandbox.bubblewrap and
identity) and one with `namespaces="off"` (cgroups only, one fork server), measured in
alternating rounds so the machine's drift hits both alike:

- cold start of squeezenet: from a call for a version with no sandbox to its answer (the box
  outlives the sandbox, so this is a fork inside a running box);
- warm overhead of a tiny [1,16] model: `pool.run` minus in-process `session.run`;
- a fork server's start, in a box against plain (what the first sandbox of a function adds).

Usage: python benchmarks/confinement_cost.py [--rounds 3] [--cold 5] [--calls 200]
Prints a JSON report (medians over rounds of each round's p50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sandbox_roundtrip import build_squeezenet, build_tiny, cold, warm

from faasd.sandbox import bubblewrap
from faasd.sandbox.launcher import Launcher
from faasd.sandbox.pool import SandboxPool


async def fork_server_start_ms(function_dir: Path, boxed: bool, samples: int = 8) -> list[float]:
    """A fork server's start to its "ready", in a box or plain, `samples` times."""
    wrapper = tuple(bubblewrap.command(bubblewrap.Box(str(function_dir)))) if boxed else ()
    times = []
    for _ in range(samples):
        launcher = Launcher(wrapper)
        started = time.perf_counter()
        await launcher.start()
        times.append((time.perf_counter() - started) * 1e3)
        await launcher.stop()
    return sorted(times)


async def main(rounds: int, repeats: int, calls: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        mode: {"cold_p50_ms": [], "warm_tiny_p50_ms": [], "warm_overhead_p50_ms": []}
        for mode in ("on", "off")
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        squeezenet = build_squeezenet(root / "squeezenet")
        tiny = build_tiny(root / "tiny" / "model.onnx").parent
        for _ in range(rounds):
            for mode in ("on", "off"):
                async with SandboxPool(
                    state_dir=root / f"state-{mode}", namespaces=mode,
                    cgroup_parent=f"faasd-bench-{uuid.uuid4().hex[:6]}",
                ) as pool:
                    c = await cold(pool, squeezenet, "data_0", (1, 3, 224, 224), repeats)
                    w = await warm(pool, tiny, "x", (1, 16), calls)
                got = samples[mode]
                got["cold_p50_ms"].append(c["idle_to_first_answer_ms"]["p50"])
                got["warm_tiny_p50_ms"].append(w["pool_run_ms"]["p50"])
                got["warm_overhead_p50_ms"].append(w["overhead_ms"]["p50"])
    report: dict[str, Any] = {
        mode: {key: round(statistics.median(values), 3) for key, values in got.items()}
        for mode, got in samples.items()
    }
    report["rounds"] = {mode: got for mode, got in samples.items()}
    with tempfile.TemporaryDirectory() as scratch:
        for mode, boxed in (("boxed", True), ("plain", False)):
            times = await fork_server_start_ms(Path(scratch), boxed)
            report[f"fork_server_start_{mode}_ms"] = {"p50": round(times[len(times) // 2], 1),
                                                      "max": round(times[-1], 1)}
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rounds, args.cold, args.calls)), indent=2))
