"""Real faasd nodes for the cluster tests: `faasd up` processes on 127.0.0.x, data on tmpfs.

Each node binds its own loopback address (Linux routes all of 127/8 to `lo`), so every node
uses the default gossip and etcd ports; `addresses.py` hands each test addresses that no
other test or run is using. State lives on /dev/shm (etcd 3.4
cannot skip fsync). Nodes are stopped with SIGKILL unless a test stops one gracefully: the
engines die with their daemon (PR_SET_PDEATHSIG), and SIGTERM to every etcd at once makes
the raft leader wait 7 s on a leadership transfer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT_S = 60.0


def require_engines() -> None:
    missing = [e for e in ("serf", "etcd") if shutil.which(e) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make test installs serf and "
                    "etcd-server)")


def shm_dir() -> Path:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix="faasd-cluster-", dir=base))


@dataclass
class Node:
    ip: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def nodes(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/system/nodes", timeout=5) as reply:
            doc: dict[str, Any] = json.load(reply)
        return doc

    def engine_pid(self, engine: str) -> int | None:
        """The pid of this daemon's `serf` or `etcd` child."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if Path(argv0.decode()).name == engine:
                    return int(pid)
        return None

    def kill(self) -> None:
        """SIGKILL the daemon; returns once its engines have died with it too (they get
        SIGKILL from the kernel as their parent dies, and exit a moment later)."""
        engines = [p for e in ("serf", "etcd") if self.process.poll() is None
                   and (p := self.engine_pid(e)) is not None]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        wait_for("the killed daemon's engines to exit",
                 lambda: not any(_running(pid) for pid in engines), 10, every_s=0.01)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has released its ports)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def start_node(root: Path, ip: str, *flags: str, name: str | None = None,
               netns: str | None = None) -> Node:
    """`faasd up` on `ip`; inside the network namespace `netns` when given (its engines too)."""
    state = root / ip
    state.mkdir(parents=True, exist_ok=True)
    port_file = state / "port"
    port_file.unlink(missing_ok=True)
    log_path = state / "daemon.log"
    argv = [sys.executable, "-m", "faasd.cli", "up", "--host", ip, "--port", "0",
            "--state-dir", str(state), "--port-file", str(port_file),
            "--cluster-addr", ip, "--node-name", name or f"node-{ip}", *flags]
    if netns is not None:  # nsenter execs (the pid stays the daemon's) and moves no mounts
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FAASD_", "NOTIFY_"))}
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=clean)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"faasd up on {ip} exited with {process.returncode}:\n"
                               + log_path.read_text())
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"faasd up on {ip} did not become ready:\n"
                               + log_path.read_text())
        time.sleep(0.05)
    return Node(ip, state, process, int(port_file.read_text()), log_path)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float,
             every_s: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError) as exc:
            result, last = None, exc
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"{what} within {timeout_s} s (last error: {last})")
