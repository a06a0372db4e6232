"""One benchmark session: scratch directory, the daemon, optionally the peer, and the inputs.

`open_bench` starts what a measurement needs and stops all of it (by pid) on the way out,
whatever happens; every script and `run_all.py` go through it.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faasd_bench.daemon import Daemon, start_daemon
from faasd_bench.models import TINY_FEATURES, bench_functions
from faasd_bench.peer import PeerModel, start_mlserver
from faasd_bench.procs import Server, free_port


@dataclass(frozen=True)
class Options:
    """Knobs shared by every daemon benchmark (command-line flags of the scripts)."""

    vcpu: int = 1
    tiny_batch: int = 32
    tiny_delay_ms: float = 1.0
    cold_keep_alive_s: float = 1.0
    peer: bool = True
    keep_scratch: bool = False
    squeezenet_model: Path | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vcpu", type=int, default=1,
                            help="vcpu of every benchmark function (and the baseline's threads)")
        parser.add_argument("--tiny-batch", type=int, default=32,
                            help="max_batch_size of the tiny function")
        parser.add_argument("--tiny-delay-ms", type=float, default=1.0,
                            help="max_queue_delay_ms of the tiny function")
        parser.add_argument("--cold-keep-alive-s", type=float, default=1.0,
                            help="keep_alive_s of the squeezenet copy used for cold starts")
        parser.add_argument("--no-peer", action="store_true", help="skip MLServer")
        parser.add_argument("--keep-scratch", action="store_true",
                            help="keep the scratch directory (logs, state) for a post-mortem")
        parser.add_argument("--squeezenet-model", type=Path, default=None,
                            help="model file to serve as squeezenet (default: the example "
                                 "function's, built by functions/build_models.py)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(args.vcpu, args.tiny_batch, args.tiny_delay_ms, args.cold_keep_alive_s,
                   not args.no_peer, args.keep_scratch, args.squeezenet_model)


@dataclass(frozen=True)
class Peer:
    server: Server
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Bench:
    """What a measurement gets: the running servers and the inputs both are sent."""

    options: Options
    scratch: Path
    daemon: Daemon
    peer: Peer | None
    peer_error: str | None = None

    def squeezenet_model(self) -> Path:
        return self.daemon.functions["squeezenet"].model

    @staticmethod
    def tiny_input() -> dict[str, np.ndarray]:
        return {"x": ((np.arange(TINY_FEATURES, dtype=np.float32) - 8) / 4).reshape(1, -1)}


def _start_peer(scratch: Path, bench_daemon: Daemon, options: Options) -> Peer:
    functions = bench_daemon.functions
    models = [
        PeerModel("squeezenet", functions["squeezenet"].model, threads=options.vcpu),
        PeerModel("tiny", functions["tiny"].model, threads=options.vcpu,
                  max_batch_size=options.tiny_batch,
                  max_batch_time_s=options.tiny_delay_ms / 1e3),
    ]
    port = free_port()
    server = start_mlserver(scratch, models, (port, free_port(), free_port()))
    try:
        for model in models:
            server.wait_http(f"http://127.0.0.1:{port}/v2/models/{model.name}/ready", 120)
    except BaseException:
        server.stop()
        raise
    return Peer(server, port)


@contextlib.contextmanager
def open_bench(options: Options) -> Iterator[Bench]:
    """Start the daemon (and the peer unless `options.peer` is off); stop both afterwards.

    A peer that cannot be installed or started is reported in `Bench.peer_error` and the
    daemon's own figures are still taken; a daemon that cannot start raises.
    """
    scratch = Path(tempfile.mkdtemp(prefix="faasd-bench-"))
    peer: Peer | None = None
    peer_error: str | None = None
    bench_daemon: Daemon | None = None
    try:
        functions = bench_functions(
            scratch, vcpu=options.vcpu, cold_keep_alive_s=options.cold_keep_alive_s,
            tiny_batch=options.tiny_batch, tiny_delay_ms=options.tiny_delay_ms,
            squeezenet=options.squeezenet_model,
        )
        bench_daemon = start_daemon(scratch, functions)
        if options.peer:
            try:
                peer = _start_peer(scratch, bench_daemon, options)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                peer_error = f"{type(exc).__name__}: {exc}"
                print(f"the peer is left out: {peer_error}", file=sys.stderr)
        yield Bench(options, scratch, bench_daemon, peer, peer_error)
    finally:
        if peer is not None:
            peer.server.stop()
        if bench_daemon is not None:
            bench_daemon.server.stop()
        if options.keep_scratch:
            print(f"scratch directory kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
