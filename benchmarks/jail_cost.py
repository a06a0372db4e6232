"""What confining a sandbox in namespaces costs: cold start and warm call, jail on vs off.

Two sandbox pools side by side, one with `namespaces="on"` (faasd.sandbox.jail: mount, IPC,
UTS and network namespaces, its own root and uid) and one with `namespaces="off"` (cgroups
only, as before), measured in alternating rounds so the machine's drift hits both alike:

- cold start of squeezenet: from a call for a version with no sandbox to its answer;
- warm overhead of a tiny [1,16] model: `pool.run` minus in-process `session.run`;
- `jail.enter` alone, timed inside forked children (the part of a cold start it adds).

Usage: python benchmarks/jail_cost.py [--rounds 3] [--cold 5] [--calls 200]
Prints a JSON report (medians over rounds of each round's p50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sandbox_roundtrip import build_squeezenet, build_tiny, cold, warm

from faasd.sandbox import jail
from faasd.sandbox.pool import SandboxPool


def enter_ms(function_dir: Path, samples: int = 20) -> list[float]:
    """`jail.enter` timed in `samples` forked children (each reports through a pipe)."""
    import os
    import time

    times = []
    for _ in range(samples):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            started = time.perf_counter()
            jail.enter(jail.JailSpec(str(function_dir)))
            os.write(write, str(time.perf_counter() - started).encode())
            os._exit(0)
        os.close(write)
        times.append(float(os.read(read, 64)) * 1e3)
        os.close(read)
        os.waitpid(pid, 0)
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
        times = enter_ms(Path(scratch))
    report["jail_enter_ms"] = {"p50": round(times[len(times) // 2], 2),
                               "max": round(times[-1], 2)}
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rounds, args.cold, args.calls)), indent=2))
