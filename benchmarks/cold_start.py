"""Cold start of squeezenet: from no sandbox at all to the first answer, as the client sees it.

The function `squeezenet-cold` is a copy of squeezenet with a short keep-alive
(`--cold-keep-alive-s`, default 1 s). Each sample: call it (binary V2, batch 1) while it has no
sandbox, read `X-Faasd-Cold-Start`, call once more warm for comparison, then wait until the
pool has stopped that sandbox (its process is gone) before the next sample. Only answers that
say `X-Faasd-Cold-Start: true` count as cold.

    .venv/bin/python benchmarks/cold_start.py [--samples 5] [--cold-keep-alive-s 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np
from faasd_bench import v2
from faasd_bench.client import Answer, Client
from faasd_bench.procs import descendants_of
from faasd_bench.session import Bench, Options, open_bench
from faasd_bench.stats import summarize

NAME = "squeezenet-cold"
PATH = f"/v2/models/{NAME}/infer"


def _request(bench: Bench) -> v2.Request:
    from faasd.runtime.onnx import OnnxModel  # the sandbox's own loader: same input spec

    spec = OnnxModel.load(bench.squeezenet_model()).inputs[0]
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    return v2.binary_request({spec.name: np.random.default_rng(1).random(shape, np.float32)})


def _call(client: Client, request: v2.Request) -> Answer:
    return client.post(PATH, request).ok(NAME)


def _wait_gone(pids: set[int], parent: int, timeout_s: float) -> float | None:
    """Seconds until none of `pids` is below `parent` any more; None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not pids & set(descendants_of(parent)):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def measure(bench: Bench, samples: int = 5, settle_s: float = 0.5) -> dict[str, Any]:
    request = _request(bench)
    keep_alive_s = bench.daemon.functions[NAME].keep_alive_s
    daemon_pid = bench.daemon.server.pid
    cold_s: list[float] = []
    cold_server_s: list[float] = []
    warm_s: list[float] = []
    not_cold = 0
    reap_s: list[float] = []
    client = Client("127.0.0.1", bench.daemon.port)
    for _ in range(samples):
        before = set(descendants_of(daemon_pid))
        answer = _call(client, request)
        started = set(descendants_of(daemon_pid)) - before
        if answer.headers.get("x-faasd-cold-start", "").lower() == "true":
            cold_s.append(answer.elapsed_s)
            cold_server_s.append(float(answer.headers.get("x-duration-seconds", "nan")))
        else:
            not_cold += 1
        warm_s.append(_call(client, request).elapsed_s)
        # A new connection per sample, as an idle client has: the cold figure includes it.
        client.close()
        gone_after = _wait_gone(started, daemon_pid, keep_alive_s + 30) if started else None
        if started and gone_after is None:
            raise RuntimeError(f"the sandbox of {NAME} (pids {sorted(started)}) was not "
                               f"stopped within keep_alive_s + 30 s")
        if gone_after is None:
            time.sleep(keep_alive_s + 2)
        else:
            reap_s.append(gone_after)
        time.sleep(settle_s)
    result: dict[str, Any] = {
        "samples": samples,
        "cold_answers": len(cold_s),
        "not_cold_answers": not_cold,
        "keep_alive_s": keep_alive_s,
        "warm": summarize(warm_s).as_dict(),
        "sandbox_stopped_after_s": [round(s, 2) for s in reap_s],
    }
    if cold_s:
        result["cold"] = summarize(cold_s).as_dict()
        result["cold_ms"] = [round(s * 1e3, 1) for s in cold_s]
        server = [s for s in cold_server_s if s == s]
        if server:
            result["cold_server_side"] = summarize(server).as_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    Options.add_arguments(parser)
    args = parser.parse_args()
    options = dataclasses.replace(Options.from_args(args), peer=False)
    with open_bench(options) as bench:
        result = measure(bench, samples=args.samples)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
