"""Resident memory: the idle daemon, its fork server, and what one warm sandbox adds.

Idle = every benchmark function deployed, no call served yet, no sandbox warm. Then one call
to squeezenet and one to tiny: the processes that appear under the daemon are their warm
sandboxes. RSS counts pages shared with the fork server (copy-on-write) in full, so each
sandbox's private memory (USS: private clean + dirty pages) is what it really adds; PSS
splits shared pages among their users. The peer's total (all its processes) is measured
after it has served the same calls.

    .venv/bin/python benchmarks/memory.py [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from faasd_bench import v2
from faasd_bench.client import Client
from faasd_bench.peer import total_memory_mb
from faasd_bench.procs import command_line, descendants_of, memory_of
from faasd_bench.session import Bench, Options, open_bench


def _squeezenet_input(bench: Bench) -> dict[str, np.ndarray]:
    from faasd.runtime.onnx import OnnxModel

    spec = OnnxModel.load(bench.squeezenet_model()).inputs[0]
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    return {spec.name: np.zeros(shape, np.float32)}


def idle(bench: Bench, settle_s: float = 2.0) -> dict[str, Any]:
    """The daemon and its children before any call."""
    time.sleep(settle_s)
    daemon_pid = bench.daemon.server.pid
    children = [
        {**memory_of(pid).as_dict(), "command": command_line(pid)[:120]}
        for pid in descendants_of(daemon_pid)
    ]
    return {"daemon": memory_of(daemon_pid).as_dict(), "children": children}


def warm_sandbox(bench: Bench, function: str, request: v2.Request, port: int) -> dict[str, Any]:
    """Call `function` once; the processes that appear are its sandbox."""
    daemon_pid = bench.daemon.server.pid
    before = set(descendants_of(daemon_pid))
    daemon_before = memory_of(daemon_pid)
    client = Client("127.0.0.1", port)
    client.post(f"/v2/models/{function}/infer", request).ok(function)
    client.close()
    time.sleep(0.5)
    new = sorted(set(descendants_of(daemon_pid)) - before)
    return {
        "sandboxes": [memory_of(pid).as_dict() for pid in new],
        "daemon_rss_delta_mb": round(memory_of(daemon_pid).rss_mb - daemon_before.rss_mb, 1),
    }


def measure(bench: Bench) -> dict[str, Any]:
    result: dict[str, Any] = {"idle": idle(bench)}
    squeezenet = _squeezenet_input(bench)
    tiny = bench.tiny_input()
    port = bench.daemon.port
    result["warm_squeezenet"] = warm_sandbox(
        bench, "squeezenet", v2.binary_request(squeezenet), port
    )
    result["warm_tiny"] = warm_sandbox(bench, "tiny", v2.json_request(tiny), port)
    if bench.peer:
        client = Client("127.0.0.1", bench.peer.port)
        for name, feeds in (("squeezenet", squeezenet), ("tiny", tiny)):
            client.post(f"/v2/models/{name}/infer", v2.json_request(feeds)).ok(f"peer {name}")
        client.close()
        result["peer_after_calls"] = total_memory_mb(bench.peer.server)
    daemon_pid = bench.daemon.server.pid
    tree = [memory_of(pid) for pid in (daemon_pid, *descendants_of(daemon_pid))]
    result["faasd_after_calls"] = {
        "processes": len(tree),
        "rss_mb": round(sum(m.rss_mb for m in tree), 1),
        "pss_mb": round(sum(m.pss_mb for m in tree), 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Options.add_arguments(parser)
    args = parser.parse_args()
    with open_bench(Options.from_args(args)) as bench:
        result = measure(bench)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
