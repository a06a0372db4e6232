"""The floor under the warm-overhead target: one aiohttp + uvloop process running the model inline.

What a call costs over in-process `session.run` when nothing but HTTP stands between the
client and the model: no queue, no sandbox process, no V2 parsing (the body is the raw float32
tensor, the answer the raw output). faasd's own warm overhead (`warm_overhead.py`) is measured
the same way (same client, same thread settings, interleaved with the in-process runs), so the
difference between the two is what the platform's layers add.

    .venv/bin/python benchmarks/raw_floor.py [--model functions/squeezenet/model.onnx] [--calls 400]

Starts its own server on a free 127.0.0.1 port and stops it by pid.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WARMUP_CALLS = 30


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

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/infer", infer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def measure(model: Path, port: int, calls: int) -> dict[str, float]:
    session = _session(model)
    meta = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in meta.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    body = x.tobytes()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    local_ms: list[float] = []
    http_ms: list[float] = []
    for i in range(calls + WARMUP_CALLS):
        started = time.perf_counter()
        session.run(None, {meta.name: x})
        local = time.perf_counter() - started
        started = time.perf_counter()
        conn.request("POST", "/infer", body, {"Content-Type": "application/octet-stream"})
        conn.getresponse().read()
        remote = time.perf_counter() - started
        if i >= WARMUP_CALLS:
            local_ms.append(local * 1e3)
            http_ms.append(remote * 1e3)
    conn.close()
    result = {}
    for q in (50, 99):
        local_q = float(np.percentile(local_ms, q))
        http_q = float(np.percentile(http_ms, q))
        result[f"in_process_p{q}_ms"] = round(local_q, 3)
        result[f"raw_http_p{q}_ms"] = round(http_q, 3)
        result[f"overhead_p{q}_ms"] = round(http_q - local_q, 3)
    return result


def _wait_for(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the raw server did not listen on port {port} in {timeout_s} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "functions/squeezenet/model.onnx")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.model, args.serve)
        return 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--model", str(args.model),
                               "--serve", str(port)])
    try:
        _wait_for(port)
        result = measure(args.model, port, args.calls)
    finally:
        server.terminate()
        server.wait(10)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
