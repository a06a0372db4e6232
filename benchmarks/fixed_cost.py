"""What faasd adds over the floor, for models that tell a large body from a long run.

The warm-overhead target's model, squeezenet, has both a 602 KB input and a 3 ms run. Beside
it this script serves the tiny model (64 bytes in, a 4 µs run), `wide` (squeezenet's input,
a 13 µs run) and `long` (2 KB in, a run about as long as squeezenet's; see
`faasd_bench.models`), every one with batching off. For each model, in the same steady rounds
as `warm_overhead.py` (alternating blocks of in-process runs, binary V2 calls to faasd and raw
calls to the model's own floor server, `raw_floor.py`), it reports the p50 overhead of faasd
and of the floor over the in-process run, and their difference: what faasd adds. A loop of
faasd calls alone then reads the daemon's CPU time per call. Every answer is checked against
the in-process output before timing starts.

    .venv/bin/python benchmarks/fixed_cost.py [--calls 400] [--rounds 2] [--cpu-seconds 3]
                                              [--chain 320]

`wide` and `long` are deployed into the running benchmark daemon through
`POST /system/functions`, as a user deploys a directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import raw_floor
from faasd_bench import v2
from faasd_bench.client import Client
from faasd_bench.models import BenchFunction, build_long, build_wide
from faasd_bench.procs import cpu_seconds
from faasd_bench.session import Bench, Options, open_bench
from faasd_bench.stats import overhead
from faasd_bench.steady import steady_rounds

from faasd.runtime.onnx import OnnxModel

WARMUP_CALLS = 30


def _deploy(bench: Bench, function: BenchFunction) -> None:
    folder = function.write(bench.scratch / "extra-functions")
    request = urllib.request.Request(
        f"{bench.daemon.url}/system/functions",
        data=json.dumps({"path": str(folder)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()


def measure_model(bench: Bench, name: str, path: Path, calls: int, block: int,
                  cpu_seconds_of_calls: float) -> dict[str, float]:
    """One model's row: faasd's and the floor's p50 overhead, and the daemon's CPU a call."""
    model = OnnxModel.load(path, bench.options.vcpu)
    spec = model.inputs[0]
    shape = [1 if d < 0 else d for d in spec.shape]
    x = np.round(np.random.default_rng(0).random(shape), 2).astype(np.float32)
    feeds = {spec.name: x}
    expected = model.run(feeds)
    request = v2.binary_request(feeds)
    url_path = f"/v2/models/{name}/infer"
    client = Client("127.0.0.1", bench.daemon.port)
    client.post(url_path, request).check_outputs(expected, name)
    names = model.output_names

    def run_in_process() -> None:  # the bare session.run, as warm_overhead.py's baseline
        model.session.run(names, feeds)

    with raw_floor.running(path) as port:
        floor = Client("127.0.0.1", port)
        floor_request = raw_floor.raw_request(x)
        for _ in range(WARMUP_CALLS):
            run_in_process()
            client.post(url_path, request)
            floor.post(raw_floor.RAW_PATH, floor_request)
        series: list[Callable[[], float]] = [
            lambda: client.post(url_path, request).ok(name).elapsed_s,
            lambda: floor.post(raw_floor.RAW_PATH, floor_request).ok("floor").elapsed_s,
        ]
        local_s, (faasd_s, floor_s) = steady_rounds(run_in_process, series, calls, block)
        floor.close()
    daemon = bench.daemon.server.pid
    before = cpu_seconds(daemon, tree=False)
    cpu_calls = 0
    until = time.perf_counter() + cpu_seconds_of_calls  # long enough for many clock ticks
    while time.perf_counter() < until:
        client.post(url_path, request)
        cpu_calls += 1
    cpu_ms = (cpu_seconds(daemon, tree=False) - before) / cpu_calls * 1e3
    client.close()
    faasd_ms = overhead(faasd_s, local_s).p50_ms
    floor_ms = overhead(floor_s, local_s).p50_ms
    return {
        "in_process_p50_ms": round(float(np.median(local_s)) * 1e3, 3),
        "tensor_bytes": int(x.nbytes),
        "faasd_overhead_p50_ms": round(faasd_ms, 3),
        "floor_overhead_p50_ms": round(floor_ms, 3),
        "faasd_adds_p50_ms": round(faasd_ms - floor_ms, 3),
        "daemon_cpu_ms_per_call": round(cpu_ms, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls of each series a round")
    parser.add_argument("--block", type=int, default=20, help="calls per block")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over the models (the order reverses each round)")
    parser.add_argument("--cpu-seconds", type=float, default=3.0,
                        help="length of the loop of calls that reads the daemon's CPU a call")
    parser.add_argument("--chain", type=int, default=320, help="MatMuls in the long model")
    args = parser.parse_args()
    options = Options(peer=False, tiny_batch=1, tiny_delay_ms=0.0)
    rows: dict[str, list[dict[str, float]]] = {}
    with open_bench(options) as bench:
        models = bench.scratch / "extra-models"
        extra = {
            "wide": build_wide(models / "wide.onnx"),
            "long": build_long(models / "long.onnx", chain=args.chain),
        }
        for name, path in extra.items():
            _deploy(bench, BenchFunction(name, path, vcpu=options.vcpu))
        order = [("tiny", bench.daemon.functions["tiny"].model), *extra.items(),
                 ("squeezenet", bench.squeezenet_model())]
        for round_ in range(args.rounds):
            for name, path in order if round_ % 2 == 0 else reversed(order):
                row = measure_model(bench, name, path, args.calls, args.block,
                                    args.cpu_seconds)
                rows.setdefault(name, []).append(row)
                print(f"round {round_ + 1} {name}: {row}", file=sys.stderr)
    summary = {
        name: {key: [min(r[key] for r in runs), max(r[key] for r in runs)]
               for key in ("faasd_adds_p50_ms", "daemon_cpu_ms_per_call")}
        for name, runs in rows.items()
    }
    result: dict[str, Any] = {"calls": args.calls, "block": args.block, "ranges": summary,
                              "rounds": rows}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
