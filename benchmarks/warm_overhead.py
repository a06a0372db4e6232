"""A warm call's overhead over in-process `session.run`: squeezenet, batch 1, one client.

The target's figure comes from the steady series: blocks of `--block` (20) in-process runs and
`--block` binary V2 calls to `/v2/models/squeezenet/infer`, alternating, `--calls` of each.
Within a block each series runs back to back, as a lone client's calls do; alternating blocks
keeps the machine's drift out of the difference. The calls go through `faasd_bench.client.Client`,
whose own cost is as small as wrk's. Each round has two more blocks of calls: the same calls
through `http.client`, whose own cost (0.1-0.25 ms here) is reported beside the target's
figure, not charged to faasd; and the floor, the raw tensor POSTed to `raw_floor.py`'s server
(aiohttp + uvloop running the model inline), so that what faasd adds over bare HTTP is read in
the same minutes. Last, wrk itself (`-t1 -c1`) makes the same binary call for
`--wrk-seconds`, as a check on the ruler.
(Interleaving per call, as the loop below
does, makes every HTTP call follow an in-process run whose 3 ms of compute has just evicted
the daemon's and the sandbox's working sets from the two cores' caches: it measures the
baseline's cache footprint as much as faasd.)

Then each iteration of one mixed loop takes, back to back: an in-process `session.run` (a
session built exactly as a sandbox builds it, intra-op threads = vcpu, spinning off), the same
binary call, and every `--json-every`-th iteration the call in V2 JSON, to faasd and to the
peer (MLServer speaks no binary extension over REST, so the peer is compared on JSON). A
second copy, `squeezenet-b8`, has the example function's dynamic batching (max 8, 2 ms queue
delay) and gets the same binary call, to show what batching costs a lone client.
Overhead = p50(HTTP) - p50(in-process), and the same for p99; the median of per-iteration
differences is reported beside it. Every answer is checked against the in-process output
before timing starts. A last loop of binary calls alone reads the CPU time each side spends
per call, a figure the machine's other load moves less.

    .venv/bin/python benchmarks/warm_overhead.py [--calls 400] [--block 20] [--wrk-seconds 8]
                                                 [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import raw_floor
from faasd_bench import prom, v2, wrk
from faasd_bench.client import Answer, Client, StdlibClient
from faasd_bench.procs import cpu_seconds
from faasd_bench.session import Bench, Options, open_bench
from faasd_bench.stats import overhead, summarize
from faasd_bench.steady import steady_rounds

from faasd.runtime.onnx import OnnxModel

PATH = "/v2/models/squeezenet/infer"
BATCHING_PATH = "/v2/models/squeezenet-b8/infer"


def _call(client: Client | StdlibClient, request: v2.Request, what: str, path: str = PATH
          ) -> Answer:
    return client.post(path, request).ok(what)


def _daemon_view(before: prom.Samples, after: prom.Samples) -> dict[str, float]:
    """Means over the timed calls (binary and JSON alike) from the daemon's own histograms."""
    labels = {"function_name": "squeezenet"}
    view = {}
    for key, metric in (("call", "faasd_function_duration_seconds"),
                        ("queue", "faasd_function_queue_duration_seconds"),
                        ("sandbox_exec", "faasd_function_compute_duration_seconds")):
        count, mean_s = prom.histogram_mean(before, after, metric, labels)
        view[key] = round(mean_s * 1e3, 3)
        view[f"{key}_n"] = count
    return view


def _cpu_per_call(bench: Bench, model: OnnxModel, feeds: dict[str, np.ndarray],
                  request: v2.Request, calls: int) -> dict[str, float]:
    """CPU milliseconds per call, which the other load on a shared machine barely moves:
    in-process `session.run`; the daemon process alone; the daemon with its fork server and
    sandboxes; this client's own HTTP work. Binary calls to `squeezenet` only."""
    names = model.output_names
    started = time.process_time()
    for _ in range(calls):
        model.session.run(names, feeds)
    inproc_s = time.process_time() - started
    pid = bench.daemon.server.pid
    client = Client("127.0.0.1", bench.daemon.port)
    daemon_s, tree_s, client_s = cpu_seconds(pid, tree=False), cpu_seconds(pid), time.process_time()
    for _ in range(calls):
        _call(client, request, "faasd binary")
    client_s = time.process_time() - client_s
    daemon_s = cpu_seconds(pid, tree=False) - daemon_s
    tree_s = cpu_seconds(pid) - tree_s
    client.close()
    per_call_ms = 1e3 / calls
    return {"inproc": round(inproc_s * per_call_ms, 3),
            "daemon": round(daemon_s * per_call_ms, 3),
            "daemon_and_sandboxes": round(tree_s * per_call_ms, 3),
            "client_http": round(client_s * per_call_ms, 3)}


def _steady(model: OnnxModel, feeds: dict[str, np.ndarray], port: int, request: v2.Request,
            calls: int, block: int, floor_port: int | None = None) -> dict[str, Any]:
    """The target's figure, from `faasd_bench.steady`: the binary calls against in-process
    runs, with two more series in the same rounds: the same calls through `http.client`, to
    show what a standard-library client adds of its own (see `faasd_bench.client`); and, with
    `floor_port`, the raw tensor POSTed to `raw_floor.py`'s server (aiohttp + uvloop running
    the model inline), the floor measured in the same minutes as faasd."""
    names = model.output_names
    clients: list[Client | StdlibClient] = [Client("127.0.0.1", port),
                                            StdlibClient("127.0.0.1", port)]
    targets = [(clients[0], PATH, request), (clients[1], PATH, request)]
    names_out = ["binary", "binary_http_client"]
    if floor_port is not None:
        clients.append(Client("127.0.0.1", floor_port))
        raw = raw_floor.raw_request(next(iter(feeds.values())))
        targets.append((clients[2], raw_floor.RAW_PATH, raw))
        names_out.append("floor")
    for client, path, body in targets:  # every connection open and warm before timing
        for _ in range(block):
            _call(client, body, f"warm-up of {path}", path)

    def timed(client: Client | StdlibClient, path: str, body: v2.Request) -> Callable[[], float]:
        return lambda: _call(client, body, path, path).elapsed_s

    inproc, series = steady_rounds(lambda: model.session.run(names, feeds),
                                   [timed(*target) for target in targets], calls, block)
    for client in clients:
        client.close()
    result: dict[str, Any] = {"block": block, "inproc": summarize(inproc).as_dict()}
    for name, times in zip(names_out, series, strict=True):
        result[name] = summarize(times).as_dict()
        result[f"overhead_{name}"] = overhead(times, inproc).as_dict()
    if floor_port is not None:
        faasd, floor = result["overhead_binary"], result["overhead_floor"]
        result["faasd_over_floor_p50_ms"] = round(faasd["p50_ms"] - floor["p50_ms"], 3)
    return result


def _wrk_one_connection(model: OnnxModel, feeds: dict[str, np.ndarray], port: int,
                        request: v2.Request, seconds: float) -> dict[str, Any]:
    """The same binary call from wrk (`-t1 -c1`, a public tool with a client cost near zero),
    against the median of in-process runs taken right before and right after it: a check on
    `Client` as a ruler. wrk reports latency percentiles only, so no paired figure."""
    names = model.output_names

    def inproc_p50_ms() -> float:
        runs = []
        for _ in range(200):
            started = time.perf_counter()
            model.session.run(names, feeds)
            runs.append(time.perf_counter() - started)
        return float(np.median(runs)) * 1e3

    before = inproc_p50_ms()
    result = wrk.run(f"http://127.0.0.1:{port}{PATH}", request.body, request.headers,
                     connections=1, duration_s=seconds)
    inproc_ms = (before + inproc_p50_ms()) / 2
    return {"wrk": result.as_dict(), "inproc_p50_ms": round(inproc_ms, 3),
            "overhead_p50_ms": round(result.p50_ms - inproc_ms, 3)}


def measure(
    bench: Bench, calls: int = 400, json_every: int = 2, warmup: int = 20, block: int = 20,
    wrk_seconds: float = 8.0,
) -> dict[str, Any]:
    model = OnnxModel.load(bench.squeezenet_model(), vcpu=bench.options.vcpu)
    spec = model.inputs[0]
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    # Image-like values in [0, 1) with two decimals, so V2 JSON carries ~5 characters a value.
    pixels = np.round(np.random.default_rng(0).random(shape), 2).astype(np.float32)
    feeds = {spec.name: pixels}
    names = model.output_names
    expected = dict(zip(names, model.session.run(names, feeds), strict=True))
    binary, as_json = v2.binary_request(feeds), v2.json_request(feeds)
    faasd = Client("127.0.0.1", bench.daemon.port)
    peer = Client("127.0.0.1", bench.peer.port) if bench.peer else None

    faasd.post(PATH, binary).check_outputs(expected, "faasd binary")
    faasd.post(PATH, as_json).check_outputs(expected, "faasd json")
    if peer:
        peer.post(PATH, as_json).check_outputs(expected, "peer json")
    faasd.post(BATCHING_PATH, binary).check_outputs(expected, "faasd binary, batching on")
    for _ in range(warmup):
        model.session.run(names, feeds)
        _call(faasd, binary, "faasd binary")
        _call(faasd, binary, "faasd binary, batching on", BATCHING_PATH)
        _call(faasd, as_json, "faasd json")
        if peer:
            _call(peer, as_json, "peer json")

    with raw_floor.running(bench.squeezenet_model()) as floor_port:
        steady = _steady(model, feeds, bench.daemon.port, binary, calls, block, floor_port)
    series: dict[str, list[float]] = {k: [] for k in
                                      ("inproc", "binary", "server", "batching", "inproc_j",
                                       "json", "peer")}
    before = prom.parse(bench.daemon.metrics())
    for i in range(calls):
        started = time.perf_counter()
        model.session.run(names, feeds)
        series["inproc"].append(time.perf_counter() - started)
        answer = _call(faasd, binary, "faasd binary")
        series["binary"].append(answer.elapsed_s)
        series["server"].append(float(answer.headers.get("x-duration-seconds", "nan")))
        answer = _call(faasd, binary, "faasd binary, batching on", BATCHING_PATH)
        series["batching"].append(answer.elapsed_s)
        if i % json_every == 0:
            series["inproc_j"].append(series["inproc"][-1])
            series["json"].append(_call(faasd, as_json, "faasd json").elapsed_s)
            if peer:
                series["peer"].append(_call(peer, as_json, "peer json").elapsed_s)
    faasd.close()
    if peer:
        peer.close()
    after = prom.parse(bench.daemon.metrics())

    result: dict[str, Any] = {
        "calls": calls,
        "json_calls": len(series["json"]),
        "vcpu": bench.options.vcpu,
        "request_bytes": {"binary": len(binary.body), "json": len(as_json.body)},
        "inproc": summarize(series["inproc"]).as_dict(),
        "binary": summarize(series["binary"]).as_dict(),
        "json": summarize(series["json"]).as_dict(),
        "steady": steady,
        "overhead_binary": overhead(series["binary"], series["inproc"]).as_dict(),
        "overhead_json": overhead(series["json"], series["inproc_j"]).as_dict(),
        "binary_batching_on": summarize(series["batching"]).as_dict(),
        "overhead_binary_batching_on": overhead(series["batching"], series["inproc"]).as_dict(),
    }
    result["daemon_view_mean_ms"] = _daemon_view(before, after)
    result["cpu_ms_per_call"] = _cpu_per_call(bench, model, feeds, binary, max(50, calls // 2))
    if wrk_seconds > 0:
        try:
            result["wrk_one_connection"] = _wrk_one_connection(
                model, feeds, bench.daemon.port, binary, wrk_seconds)
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            result["wrk_one_connection"] = {"error": f"{type(exc).__name__}: {exc}"}
    server_s = [s for s in series["server"] if s == s]
    if server_s:
        result["binary_server_side"] = summarize(server_s).as_dict()
    if series["peer"]:
        peer_latency = summarize(series["peer"])
        result["peer_json"] = peer_latency.as_dict()
        ratio = peer_latency.p50_ms / result["json"]["p50_ms"]
        result["peer_over_faasd_json_p50"] = round(ratio, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="iterations of the timed loop")
    parser.add_argument("--json-every", type=int, default=2,
                        help="send the JSON calls every N-th iteration")
    parser.add_argument("--block", type=int, default=20,
                        help="calls per block in the steady (target) series")
    parser.add_argument("--wrk-seconds", type=float, default=8.0,
                        help="length of the wrk -c1 cross-check (0 skips it)")
    Options.add_arguments(parser)
    args = parser.parse_args()
    with open_bench(Options.from_args(args)) as bench:
        result = measure(bench, calls=args.calls, json_every=args.json_every, block=args.block,
                         wrk_seconds=args.wrk_seconds)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
