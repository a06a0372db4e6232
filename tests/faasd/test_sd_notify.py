"""sd_notify over a real datagram socket, as systemd would receive it."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from faasd.systemd import Notifier


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock


def test_ready_status_and_stopping_reach_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with _listener(path) as sock:
        notifier = Notifier(env={"NOTIFY_SOCKET": str(path)})
        assert notifier.ready("serving 2 function(s)")
        ready = sock.recv(4096).decode().splitlines()
        assert ready[0] == "READY=1"
        assert "STATUS=serving 2 function(s)" in ready
        assert f"MAINPID={os.getpid()}" in ready
        assert notifier.stopping()
        assert sock.recv(4096).decode().splitlines()[0] == "STOPPING=1"


def test_abstract_socket_names_are_supported() -> None:
    name = f"faasd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_interval_s is None


async def test_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with _listener(path) as sock:
        sock.setblocking(False)
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000",
               "WATCHDOG_PID": str(os.getpid())}
        notifier = Notifier(env=env)
        assert notifier.watchdog_interval_s == 0.05
        notifier.start_watchdog()
        await asyncio.sleep(0.22)
        await notifier.stop_watchdog()
        pings = []
        while True:
            try:
                pings.append(sock.recv(100))
            except BlockingIOError:
                break
        assert pings.count(b"WATCHDOG=1") >= 3


def test_watchdog_meant_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    assert Notifier(env=env).watchdog_interval_s is None
