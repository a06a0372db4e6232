"""The sd_notify protocol, spoken directly: datagrams to `$NOTIFY_SOCKET`.

`READY=1` once the listener is bound and the startup functions are loaded, `STATUS=...` for
`systemctl status`, `WATCHDOG=1` every `WATCHDOG_USEC / 2` from the event loop (a blocked loop
then misses its pings and systemd restarts the daemon), `STOPPING=1` when the drain starts.
Without `NOTIFY_SOCKET` (a terminal, CI) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("faasd.systemd")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        self._watchdog_s = _watchdog_interval_s(env)
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of systemd's `WatchdogSec=`, or None when it is off."""
        return self._watchdog_s

    def notify(self, *lines: str) -> bool:
        """Send `lines` as one datagram; False (and a log line) when it cannot be delivered."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str = "draining in-flight calls") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self) -> None:
        if self._watchdog_s is not None and self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ping(self._watchdog_s))

    async def stop_watchdog(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _ping(self, interval_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process
    return int(usec) / 2 / 1_000_000
