"""Supervision of one engine child process (the node's `serf agent` or `etcd`).

Like uvicorn supervising workers: start, wait until ready, restart with backoff when it dies,
and on stop ask it to go gracefully, then signal, then kill. The child runs in its own session
(a Ctrl-C at the terminal reaches faasd, which stops it in order, not the child directly) and
with `PR_SET_PDEATHSIG`, so a faasd killed with SIGKILL takes its engines with it, as a node
that dies would. Its output is appended to `log_path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from faasd.cluster.errors import EngineFailed, EngineMissing

log = logging.getLogger("faasd.cluster")

#: Debian package of each engine, for the message when it is missing.
PACKAGES = {"serf": "serf", "etcd": "etcd-server"}

_PR_SET_PDEATHSIG = 1

#: How long a child whose readiness check failed may take to exit before the check's own
#: error is reported instead of its exit.
EXIT_WAIT_S = 2.0


def find_engine(name: str) -> str:
    """The path of the `serf` or `etcd` executable, or `EngineMissing` naming its package."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, name)
        raise EngineMissing(f"{name} is not installed (needed for --cluster-addr); install "
                            f"the Debian package: apt-get install {package}")
    return path


def _last_line(log_path: Path) -> str:
    """The last non-empty line of the child's log (its own words on why it exited)."""
    try:
        with log_path.open("rb") as log_file:
            log_file.seek(max(0, log_path.stat().st_size - 4096))
            lines = log_file.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")[:300]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `initial_s`, doubling up to `max_s`; back to `initial_s` once the
    child has run `stable_s` without dying. Pure: the caller passes the uptime."""

    initial_s: float = 0.2
    max_s: float = 5.0
    stable_s: float = 10.0

    def next_delay(self, previous_s: float | None, uptime_s: float) -> float:
        if previous_s is None or uptime_s >= self.stable_s:
            return self.initial_s
        return min(self.max_s, previous_s * 2)


class Supervisor:
    """Keeps `argv` running. `ready` is awaited after every (re)start: it must return once the
    child serves (or raise). `restarts` counts the restarts after unexpected exits."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready: Callable[[], Awaitable[None]],
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._backoff = backoff or Backoff()
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start the child and wait until it is ready; then watch it and restart it."""
        await self._spawn()
        await self._wait_ready(ready_timeout_s)
        self._watcher = asyncio.ensure_future(self._watch())

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        log.info("started %s (pid %d)", self.name, self._process.pid)

    async def _wait_ready(self, timeout_s: float) -> None:
        process = self._process
        assert process is not None
        ready = asyncio.ensure_future(self._ready())
        exited = asyncio.ensure_future(process.wait())
        try:
            done, _ = await asyncio.wait({ready, exited}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            if not ready.done():
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ready
        if ready in done and ready.exception() is None:
            return
        if ready in done:
            # The readiness check failed: when that is because the child is dying (e.g. its
            # port was taken, and the check reached whoever holds it), its exit says why.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), EXIT_WAIT_S)
            if process.returncode is None:
                ready.result()
        reason = (f"exited with code {process.returncode}" if process.returncode is not None
                  else f"was not ready within {timeout_s:g} s")
        tail = _last_line(self.log_path)
        raise EngineFailed(f"{self.name} {reason}{f' ({tail})' if tail else ''}; its log is "
                           f"{self.log_path}")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        delay: float | None = None
        while not self._stopping:
            assert self._process is not None
            started = loop.time()
            code = await self._process.wait()
            if self._stopping:
                return
            delay = self._backoff.next_delay(delay, loop.time() - started)
            log.warning("%s (pid %d) exited with code %s; restarting it in %.1f s (log: %s)",
                        self.name, self._process.pid, code, delay, self.log_path)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                await self._wait_ready(30.0)
            except (OSError, EngineFailed) as exc:
                log.error("restarting %s failed: %s", self.name, exc)
                continue
            self.restarts += 1
            log.info("%s restarted (pid %d)", self.name, self._process.pid)

    async def stop(
        self,
        graceful: Callable[[], Awaitable[None]] | None = None,
        sig: signal.Signals = signal.SIGTERM,
        grace_s: float = 10.0,
    ) -> None:
        """`graceful()` first (e.g. Serf's `leave`), then `sig`, then SIGKILL after `grace_s`."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self._process
        if process is None or process.returncode is not None:
            return
        if graceful is not None:
            try:
                await asyncio.wait_for(graceful(), grace_s)
                await asyncio.wait_for(process.wait(), grace_s)
                return
            except (TimeoutError, OSError, ConnectionError, EngineFailed) as exc:
                log.warning("%s did not stop gracefully (%s); sending %s", self.name, exc,
                            sig.name)
            except Exception as exc:  # an RPC error: fall through to the signal
                log.warning("%s: graceful stop failed (%s); sending %s", self.name, exc,
                            sig.name)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                log.warning("%s (pid %d) ignored %s for %g s; killing it", self.name,
                            process.pid, sig.name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

