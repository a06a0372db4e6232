"""Loopback addresses for the cluster tests: each test gets 127.0.0.x addresses of its own.

A node binds its own 127.0.0.x with the engines' default ports (Serf 7946 and 7373, etcd 2379
and 2380). Fixed addresses made two runs on one machine (two checkouts, or the failover
benchmark beside the tests) start agents on the same 127.0.0.2: one run's agent failed to
bind, and its daemon reached the other run's agent instead ("Invalid authentication token").
So an address is handed out only when

1. no other process holds its lock file (`flock`, which the kernel drops when the holder
   exits, SIGKILL included, so a crashed run leaves nothing reserved), and
2. none of the engine ports on it is bound right now (an engine still shutting down).

Within one process the addresses rotate: one released by a test is handed out again only after
every other free one, so no test starts on an address a previous test's nodes were using
moments ago.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENGINE_PORTS = (7946, 7373, 2379, 2380)
UDP_PORTS = (7946,)
FIRST, LAST = 2, 254  # 127.0.0.1 is left to everything else on the machine


def engine_ports_free(ip: str) -> bool:
    """Whether the engines could bind their ports on `ip` now (with SO_REUSEADDR, as Go
    binds: a listener in the way counts, a connection in TIME_WAIT does not)."""
    probes = [(socket.SOCK_STREAM, p) for p in ENGINE_PORTS]
    probes += [(socket.SOCK_DGRAM, p) for p in UDP_PORTS]
    for kind, port in probes:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
                if kind == socket.SOCK_STREAM:
                    probe.listen(1)
            except OSError:
                return False
    return True


class Addresses:
    """Hands out free loopback addresses, reserved by lock files under `lock_dir`."""

    def __init__(self, lock_dir: Path | None = None) -> None:
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "faasd-test-addresses"
        self._next = FIRST
        self._held: dict[str, int] = {}  # address -> the locked file descriptor

    @contextlib.contextmanager
    def lease(self, count: int) -> Iterator[list[str]]:
        """`count` addresses, reserved until the block ends."""
        taken = self.take(count)
        try:
            yield taken
        finally:
            self.release(taken)

    def take(self, count: int) -> list[str]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        taken: list[str] = []
        for _ in range(LAST - FIRST + 1):
            if len(taken) == count:
                return taken
            ip = f"127.0.0.{self._next}"
            self._next = FIRST if self._next == LAST else self._next + 1
            if ip not in self._held and self._lock(ip):
                if engine_ports_free(ip):
                    taken.append(ip)
                else:
                    self.release([ip])
        self.release(taken)
        raise RuntimeError(f"fewer than {count} free loopback addresses in 127.0.0.{FIRST}-"
                           f"{LAST} (reserved under {self.lock_dir}, or their ports bound)")

    def _lock(self, ip: str) -> bool:
        fd = os.open(self.lock_dir / f"{ip}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._held[ip] = fd
        return True

    @property
    def held(self) -> set[str]:
        return set(self._held)

    def release(self, ips: list[str]) -> None:
        for ip in ips:
            fd = self._held.pop(ip, None)
            if fd is not None:
                os.close(fd)  # closing drops the lock
