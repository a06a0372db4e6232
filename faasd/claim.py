"""What a daemon claims before it creates anything: its port, its state directory, its name.

`faasd up` binds its port first, so a daemon that cannot listen fails before it has made a
cgroup or started a fork server. It then locks its state directory (`faasd.lock`, an flock
held for the daemon's life), so two daemons never share one, and a lock that is free means
whatever the directory's sandboxes and uploads left behind belongs to a dead daemon and can be
removed. Its cgroup parent is named after the state directory, so two daemons on one host do
not share a parent and one never reaps the other's groups.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
from pathlib import Path

from faasd.config import ConfigError

LOCK_NAME = "faasd.lock"


def bind(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking socket on (host, port); ConfigError that says what to do."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}; check --host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host or '*'}:{port}: {exc.strerror}; is another "
                          "daemon using the port? choose another with --port") from None
    sock.setblocking(False)
    return sock


def lock_state_dir(state_dir: Path) -> int:
    """An open, exclusively locked `faasd.lock` in `state_dir` (close it to let go)."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another faasd daemon uses the state directory {state_dir}; stop it "
                          "or give this one its own --state-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def cgroup_parent_for(base: str, state_dir: Path) -> str:
    """`base` plus a short digest of the state directory: one parent group per daemon."""
    return f"{base}-{hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]}"


def remove_upload_scratch(state_dir: Path) -> int:
    """Delete the upload scratch a killed daemon left (`uploads/`); how many entries."""
    scratch = state_dir / "uploads"
    if not scratch.is_dir():
        return 0
    entries = list(scratch.iterdir())
    for entry in entries:
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return len(entries)
