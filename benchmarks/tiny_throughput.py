"""Calls per second of the tiny model at 32 connections, with dynamic batching, against the peer.

wrk (`-t1`, a Lua script POSTing one fixed V2 JSON body) drives `/v2/models/tiny/infer` on
faasd and on MLServer in turns: a warm-up run each, then `--rounds` rounds of faasd then peer,
and the median round of each is reported (calls/s counts 2xx answers only). A short
one-connection run of each gives the unloaded latency. Both servers batch the same way
(max batch 32, max queue delay 1 ms unless the flags say otherwise). The CPU time the
server's whole process tree used per answered call is reported beside (less sensitive to
the other load on a shared machine than calls/s).

    .venv/bin/python benchmarks/tiny_throughput.py [--connections 32] [--duration-s 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from faasd_bench import prom, v2, wrk
from faasd_bench.procs import cpu_seconds
from faasd_bench.session import Bench, Options, open_bench

PATH = "/v2/models/tiny/infer"


def _median_run(runs: list[wrk.WrkResult], cpu_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r.calls_per_s)
    middle = ordered[(len(ordered) - 1) // 2]
    return {**middle.as_dict(), "rounds_calls_per_s": [round(r.calls_per_s) for r in runs],
            "median_calls_per_s": round(statistics.median(r.calls_per_s for r in runs)),
            "server_cpu_ms_per_call": round(statistics.median(cpu_ms), 3)}


def measure(bench: Bench, connections: int = 32, duration_s: float = 10, warmup_s: float = 3,
            rounds: int = 3, single_s: float = 4) -> dict[str, Any]:
    request = v2.json_request(bench.tiny_input())
    targets = {"faasd": bench.daemon.url + PATH}
    pids = {"faasd": bench.daemon.server.pid}
    if bench.peer:
        targets["mlserver"] = bench.peer.url + PATH
        pids["mlserver"] = bench.peer.server.pid

    def load(url: str, conns: int, seconds: float) -> wrk.WrkResult:
        return wrk.run(url, request.body, request.headers, connections=conns, duration_s=seconds)

    for url in targets.values():
        load(url, connections, warmup_s)
    runs: dict[str, list[wrk.WrkResult]] = {name: [] for name in targets}
    cpu_ms: dict[str, list[float]] = {name: [] for name in targets}
    before = prom.parse(bench.daemon.metrics())
    for _ in range(rounds):
        for name, url in targets.items():
            cpu_before_s = cpu_seconds(pids[name])
            run = load(url, connections, duration_s)
            runs[name].append(run)
            cpu_ms[name].append((cpu_seconds(pids[name]) - cpu_before_s) * 1e3 / run.requests)
    after = prom.parse(bench.daemon.metrics())
    labels = {"function_name": "tiny"}
    batches, mean_batch = prom.histogram_mean(before, after, "faasd_function_batch_size", labels)
    _, mean_exec_s = prom.histogram_mean(
        before, after, "faasd_function_compute_duration_seconds", labels
    )
    single = {name: load(url, 1, single_s).as_dict() for name, url in targets.items()}

    result: dict[str, Any] = {
        "connections": connections,
        "duration_s": duration_s,
        "request_bytes": len(request.body),
        "tiny_batch": bench.options.tiny_batch,
        "tiny_delay_ms": bench.options.tiny_delay_ms,
        "loaded": {name: _median_run(series, cpu_ms[name]) for name, series in runs.items()},
        "faasd_batches": {"count": batches, "mean_size": round(mean_batch, 2),
                          "mean_sandbox_exec_ms": round(mean_exec_s * 1e3, 3)},
        "one_connection": single,
    }
    if "mlserver" in runs:
        ours = result["loaded"]["faasd"]["median_calls_per_s"]
        theirs = result["loaded"]["mlserver"]["median_calls_per_s"]
        result["faasd_over_peer_calls_per_s"] = round(ours / max(theirs, 1), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=10, help="each timed wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    Options.add_arguments(parser)
    args = parser.parse_args()
    with open_bench(Options.from_args(args)) as bench:
        result = measure(bench, args.connections, args.duration_s, rounds=args.rounds)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
