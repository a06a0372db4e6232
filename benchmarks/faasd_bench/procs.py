"""Processes the benchmarks start: launch, wait for HTTP, measure memory, stop by pid.

Every server is started in its own session with its output in a log file. Stopping sends
SIGTERM to the server's pid, waits, then SIGKILLs it and any descendant it left behind (pids
collected before the stop, checked against their start time so a reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Memory:
    """One process's memory: resident (RSS), proportional (PSS) and private (USS), in MB."""

    pid: int
    rss_mb: float
    pss_mb: float
    uss_mb: float

    def as_dict(self) -> dict[str, float]:
        return {"pid": self.pid, **{k: round(v, 1) for k, v in asdict(self).items() if k != "pid"}}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(root: int, *, tree: bool = True) -> float:
    """CPU time (user + system) used so far by `root` and (`tree`) every live process below it."""
    ticks = 0
    for pid in (root, *(descendants_of(root) if tree else ())):
        fields = _stat_fields(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def descendants_of(pid: int) -> list[int]:
    """Every process below `pid`, breadth first."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [kid for parent in frontier for kid in children_of(parent)]
        found += kids
        frontier = kids
    return found


def memory_of(pid: int) -> Memory:
    """RSS from /proc/<pid>/status; PSS and USS (private clean + dirty) from smaps_rollup."""
    fields_kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields_kb[key] = int(rest.split()[0])
    uss_kb = fields_kb.get("Private_Clean", 0) + fields_kb.get("Private_Dirty", 0)
    return Memory(pid, fields_kb["Rss"] / 1024, fields_kb["Pss"] / 1024, uss_kb / 1024)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


class Server:
    """A server process the benchmark owns. Use as a context manager: it always stops."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
        self.pid = self.process.pid

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_http(self, url: str, timeout_s: float) -> None:
        """Until GET `url` answers 200. Raises RuntimeError (with the log) on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n"
                                   f"{self.log_tail()}")
            with (contextlib.suppress(OSError, urllib.error.URLError),
                  urllib.request.urlopen(url, timeout=2) as answer):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: {url} not ready after {timeout_s:g} s:\n"
                           f"{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL the server and its leftover children."""
        left = [(pid, start_time(pid)) for pid in descendants_of(self.pid)]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid, started in left:
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


@contextlib.contextmanager
def servers(*started: Server) -> Iterator[tuple[Server, ...]]:
    """Stop every server given, whatever happens in the block."""
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()
