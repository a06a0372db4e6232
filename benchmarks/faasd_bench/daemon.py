"""The daemon under test: `faasd up` on 127.0.0.1 serving the benchmark's function copies.

Started as a user starts it (the `faasd` console script of this interpreter's environment),
with a scratch state directory, and waited on until every function answers its V2 metadata.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from faasd_bench.models import BenchFunction
from faasd_bench.procs import Server, children_of, free_port

FAASD = Path(sys.executable).with_name("faasd")


class Daemon:
    """A running faasd and the functions it serves."""

    def __init__(self, server: Server, port: int, functions: list[BenchFunction]) -> None:
        self.server = server
        self.port = port
        self.functions = {f.name: f for f in functions}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fork_server_pids(self) -> list[int]:
        """The daemon's children while no sandbox is warm: the fork server (and helpers)."""
        return children_of(self.server.pid)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            text: str = answer.read().decode()
            return text


def start_daemon(scratch: Path, functions: list[BenchFunction], timeout_s: float = 240,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Daemon:
    """Write the function copies under `scratch`, start faasd on a free port, wait until ready.
    `env` is added to this process's environment for the daemon (and so its sandboxes); `cwd`
    is its working directory (the fork server, started with `python -m`, imports from there
    first).

    Raises RuntimeError (with the daemon's log) if it exits or a function never becomes ready;
    the daemon is stopped in that case.
    """
    if not FAASD.exists():
        raise RuntimeError(f"{FAASD} is missing: install the project first (`make run` does)")
    functions_dir = scratch / "functions"
    for function in functions:
        function.write(functions_dir)
    port = free_port()
    argv = [
        str(FAASD), "up", "--host", "127.0.0.1", "--port", str(port),
        "--functions", str(functions_dir), "--state-dir", str(scratch / "state"),
    ]
    server = Server("faasd", argv, scratch / "faasd.log", env=env, cwd=cwd)
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s)
        # `faasd up` deploys the startup functions before it listens: one missing now failed.
        for function in functions:
            server.wait_http(f"http://127.0.0.1:{port}/v2/models/{function.name}", 10)
    except BaseException:
        server.stop()
        raise
    return Daemon(server, port, functions)
