"""faasd's sandbox hop against the least a hop to another process can cost, without HTTP.

The warm-overhead target's largest share is the hop from the daemon to the sandbox and back.
This puts a number under it. In one uvloop process, in alternating blocks of `--block` calls:

- **faasd**: `SandboxPool.run` of one batch-1 squeezenet call in a warm sandbox (what the
  daemon's invoker does for a call);
- **bare**: the same model in a forked worker, pinned to one CPU like a sandbox at vcpu 1,
  with the same thread settings; the tensor goes through a memfd and an 8-byte message over a
  socketpair wakes the worker, which runs the model, copies the output into a second memfd and
  answers with 8 bytes: no framing, no pool, no cgroups, no timeout.

For each: the round trip minus the worker's own execution time (p50, p90). The difference is
what faasd's channel, framing, pool and confinement cost on top of two process wake-ups and
the tensor's copy.

    .venv/bin/python benchmarks/bare_hop.py [--calls 400] [--block 20]

Prints a JSON report. The bare worker is this script's child, killed by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from faasd_bench.models import squeezenet_model
from faasd_bench.stats import summarize
from sandbox_roundtrip import version_of

from esg.model import Config
from faasd.runtime.onnx import OnnxModel
from faasd.sandbox.items import TensorItem
from faasd.sandbox.pool import SandboxPool

SHAPE = (1, 3, 224, 224)
AREA_BYTES = 1 << 20
TIMING = struct.Struct("<d")


def bare_worker(sock: socket.socket, model_path: Path, inputs_fd: int, outputs_fd: int) -> NoReturn:
    """The forked child: run the model on the input area at every message, until EOF."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU, as a sandbox at vcpu 1
    model = OnnxModel.load(model_path, vcpu=1)
    name, output = model.inputs[0].name, model.output_names[0]
    inputs, outputs = mmap.mmap(inputs_fd, AREA_BYTES), mmap.mmap(outputs_fd, AREA_BYTES)
    x = np.frombuffer(inputs, dtype=np.float32, count=int(np.prod(SHAPE))).reshape(SHAPE)
    message = bytearray(TIMING.size)
    while sock.recv_into(message):
        started = time.perf_counter()
        y = model.session.run([output], {name: x})[0]
        outputs[: y.nbytes] = y.tobytes()
        sock.send(TIMING.pack(time.perf_counter() - started))
    os._exit(0)


class _Reply(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= TIMING.size and self.waiter is not None:
            self.waiter.set_result(self.data[: TIMING.size])
            self.data, self.waiter = self.data[TIMING.size :], None


async def main(calls: int, block: int) -> dict[str, Any]:
    model_path = squeezenet_model()
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    inputs_fd, outputs_fd = os.memfd_create("bare-in"), os.memfd_create("bare-out")
    for fd in (inputs_fd, outputs_fd):
        os.ftruncate(fd, AREA_BYTES)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        bare_worker(theirs, model_path, inputs_fd, outputs_fd)
    theirs.close()
    inputs, outputs = mmap.mmap(inputs_fd, AREA_BYTES), mmap.mmap(outputs_fd, AREA_BYTES)
    loop = asyncio.get_running_loop()
    transport, reply = await loop.create_unix_connection(_Reply, sock=ours)

    async def bare() -> float:
        started = time.perf_counter()
        inputs[: x.nbytes] = x.reshape(-1).view(np.uint8).data
        reply.waiter = loop.create_future()
        ours.send(b"run.....")
        (exec_s,) = TIMING.unpack(await reply.waiter)
        np.frombuffer(outputs, dtype=np.float32, count=1000).copy()
        return time.perf_counter() - started - exec_s

    try:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            directory = root / "squeezenet"
            directory.mkdir()
            shutil.copy(model_path, directory / "model.onnx")
            async with SandboxPool(
                state_dir=root / "state", cgroup_parent=f"faasd-bench-{uuid.uuid4().hex[:6]}"
            ) as pool:
                version, items = version_of(directory), [TensorItem({"data_0": x})]

                async def faasd() -> float:
                    started = time.perf_counter()
                    execution = await pool.run(version, Config(1, 1), items)
                    return time.perf_counter() - started - execution.exec_s

                series: dict[str, Callable[[], Awaitable[float]]] = {"faasd": faasd, "bare": bare}
                samples: dict[str, list[float]] = {key: [] for key in series}
                for _ in range(block):  # warm both
                    await bare()
                    await faasd()
                for round_ in range(max(1, calls // block)):
                    order = list(series.items())
                    for key, call in order[round_ % 2 :] + order[: round_ % 2]:
                        for _ in range(block):
                            samples[key].append(await call())
    finally:
        transport.close()
        os.kill(pid, signal.SIGKILL)  # our own child, by pid
        os.waitpid(pid, 0)
    faasd_s, bare_s = summarize(samples["faasd"]), summarize(samples["bare"])
    report: dict[str, Any] = {
        "round_trip_minus_exec": {"faasd": faasd_s.as_dict(), "bare": bare_s.as_dict()},
        "faasd_minus_bare_p50_ms": round(faasd_s.p50_ms - bare_s.p50_ms, 3),
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls of each series")
    parser.add_argument("--block", type=int, default=20, help="calls per block")
    args = parser.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main(args.calls, args.block)), indent=2))
