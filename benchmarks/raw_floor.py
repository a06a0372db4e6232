"""The floor under the warm-overhead target: one aiohttp + uvloop process running the model inline.

What a call costs over in-process `session.run` when nothing but HTTP stands between the
client and the model: no queue, no sandbox process, no V2 parsing (the body is the raw float32
tensor, the answer the raw output). The server tunes glibc's allocator as `faasd up` does
(`faasd.malloc`). It is measured as faasd's own warm overhead is (`warm_overhead.py`): the
same client (`faasd_bench.client.Client`), the same thread settings, the same steady series
(alternating blocks of `--block` in-process runs and `--block` calls), so the difference
between the two is what the platform's layers add.

    .venv/bin/python benchmarks/raw_floor.py [--model functions/squeezenet/model.onnx] [--calls 400]

Starts its own server on a free 127.0.0.1 port and stops it by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from faasd_bench.client import Client
from faasd_bench.stats import overhead
from faasd_bench.steady import steady_rounds
from faasd_bench.v2 import Request

from faasd import malloc

REPO = Path(__file__).resolve().parents[1]
WARMUP_CALLS = 30
RAW_PATH = "/infer"


def _session(model: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as a faasd sandbox at vcpu 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def serve(model: Path, port: int) -> None:
    import uvloop
    from aiohttp import web

    session = _session(model)
    meta = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in meta.shape]

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        (output,) = session.run(None, {meta.name: np.frombuffer(body, np.float32).reshape(shape)})
        return web.Response(body=output.tobytes(), content_type="application/octet-stream")

    malloc.tune()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post(RAW_PATH, infer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def measure(model: Path, port: int, calls: int, block: int) -> dict[str, float]:
    session = _session(model)
    meta = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in meta.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    request = raw_request(x)
    client = Client("127.0.0.1", port)
    for _ in range(WARMUP_CALLS):
        session.run(None, {meta.name: x})
        client.post(RAW_PATH, request)

    def call() -> float:
        return client.post(RAW_PATH, request).ok("the raw server").elapsed_s

    local_s, (http_s,) = steady_rounds(lambda: session.run(None, {meta.name: x}), [call],
                                       calls, block)
    client.close()
    result = {}
    for q in (50, 99):
        result[f"in_process_p{q}_ms"] = round(float(np.percentile(local_s, q)) * 1e3, 3)
        result[f"raw_http_p{q}_ms"] = round(float(np.percentile(http_s, q)) * 1e3, 3)
    measured = overhead(http_s, local_s)
    result["overhead_p50_ms"] = measured.p50_ms
    result["overhead_p99_ms"] = measured.p99_ms
    return result


def _wait_for(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the raw server did not listen on port {port} in {timeout_s} s")


@contextlib.contextmanager
def running(model: Path) -> Iterator[int]:
    """The raw server on a free 127.0.0.1 port (yielded) for the block; stopped by pid after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--model", str(model),
                               "--serve", str(port)])
    try:
        _wait_for(port)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def raw_request(inputs: np.ndarray) -> Request:
    """What the raw server takes: the input tensor's bytes, nothing else."""
    return Request(inputs.tobytes(), {"Content-Type": "application/octet-stream"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "functions/squeezenet/model.onnx")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--block", type=int, default=20, help="calls per block")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.model, args.serve)
        return 0
    with running(args.model) as port:
        result = measure(args.model, port, args.calls, args.block)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
