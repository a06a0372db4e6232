"""The daemon's handle on the fork server: start it, ask it for workers, hear how they end.

See `faasd.sandbox.forkserver` for the control protocol. If the fork server dies, every
worker dies with it (parent-death signal); the next spawn starts a new fork server. A launcher
made with a `wrapper` (`faasd.sandbox.bubblewrap.command`) runs its fork server inside it,
with an environment of PATH, LANG and ORT_DISABLE_TELEMETRY only: a forked worker's
/proc/PID/environ shows the fork server's, which must hold nothing of the daemon's.

A fork server's stdin is /dev/null; its stdout and stderr are the daemon's (where its own
tracebacks belong; each worker points both at its relay pipe before anything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import msgpack

from faasd.sandbox.protocol import WorkerSpec

logger = logging.getLogger("faasd.sandbox")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
_MAX_CONTROL_BYTES = 1 << 16
#: Without it, `import onnxruntime` opens a telemetry database (SQLite, read-write, in the
#: fork server's home) and every forked worker would inherit it: a file that all the sandboxes
#: of a box could write (`faasd.sandbox.descriptors`). A sandbox has no network to send
#: telemetry with anyway.
NO_TELEMETRY = {"ORT_DISABLE_TELEMETRY": "1"}
#: The whole environment of a wrapped fork server.
WRAPPED_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **NO_TELEMETRY}


class LaunchError(RuntimeError):
    """The fork server could not start, or could not fork a worker."""


@dataclass
class Spawned:
    """A forked worker: its pid, a pidfd to signal it safely, and how it will end."""

    pid: int
    pidfd: int
    #: Resolves to the exit code (negative: killed by that signal) once the worker is reaped.
    exited: asyncio.Future[int]

    def has_exited(self) -> bool:
        """True once the worker has ended, even before the fork server reports it."""
        if self.exited.done() or self.pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))  # a pidfd turns readable when its process exits

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def host_pid(pidfd: int) -> int:
    """The pid, in this process's PID namespace, of the process a pidfd refers to (a fork
    server in a box of its own reports its namespace's pids)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            key, _, value = line.partition(":")
            if key == "Pid":
                return int(value)
    raise LaunchError("the kernel does not say a pidfd's pid (Linux 5.3 or later needed)")


class Launcher:
    def __init__(self, wrapper: tuple[str, ...] = ()) -> None:
        self.wrapper = wrapper
        self._control: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[int] | None = None
        self._pending: dict[int, asyncio.Future[Spawned]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        #: spawns that find no fork server start one, not one each
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._control is not None

    async def start(self) -> None:
        if self._process is not None:  # a fork server that died: collect it first
            await self.stop()
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.wrapper,
                sys.executable,
                "-m",
                "faasd.sandbox.forkserver",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=WRAPPED_ENV if self.wrapper else {**os.environ, **NO_TELEMETRY},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        self._ready = loop.create_future()
        loop.add_reader(ours, self._on_readable)
        try:
            pid = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        except (TimeoutError, LaunchError) as exc:
            await self.stop()
            raise LaunchError(f"the sandbox fork server did not start: {exc}") from exc
        if self.wrapper:  # its own pid is its box's; the host knows it by its bwrap's
            logger.info("fork server [%d] ready in a box (its pid there %d)",
                        self._process.pid, pid)
        else:
            logger.info("fork server [%d] ready", pid)

    async def spawn(
        self,
        spec: WorkerSpec,
        sock: socket.socket,
        stderr_fd: int,
        shared_fds: tuple[int, ...] = (),
        cgroup_fds: tuple[int, ...] = (),
    ) -> Spawned:
        """Fork a worker that will serve `sock` and write its stderr to `stderr_fd`, with the
        request and response memfds `shared_fds` where it has shared memory, joining the
        cgroups whose `cgroup.procs` files `cgroup_fds` are.

        A fork server found dead (before its exit was noticed) is replaced once.
        """
        message: dict[str, Any] = {"op": "spawn", "spec": spec.to_wire(),
                                   "shared": len(shared_fds)}
        for attempt in (1, 2):
            async with self._starting:
                if self._control is None:
                    await self.start()
            assert self._control is not None
            request_id = next(self._ids)
            message["id"] = request_id
            future: asyncio.Future[Spawned] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            fds = [sock.fileno(), stderr_fd, *shared_fds, *cgroup_fds]
            try:
                socket.send_fds(self._control, [msgpack.packb(message)], fds)
            except OSError as exc:
                self._pending.pop(request_id, None)
                self._on_lost(expected=False)
                if attempt == 2:
                    raise LaunchError(f"could not reach the fork server: {exc}") from exc
                continue
            return await future
        raise AssertionError("unreachable")

    def _on_readable(self) -> None:
        assert self._control is not None
        while self._control is not None:
            try:
                data, fds, _, _ = socket.recv_fds(self._control, _MAX_CONTROL_BYTES, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._on_lost(expected=False)
                return
            self._dispatch(msgpack.unpackb(data, raw=False), fds)

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(int(message["pid"]))
        elif op == "spawned":
            exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._exits[int(message["pid"])] = exited  # the fork server's pid for it
            future = self._pending.pop(message["id"], None)
            pidfd = fds.pop()
            spawned = Spawned(pid=host_pid(pidfd), pidfd=pidfd, exited=exited)
            if future is not None and not future.done():
                future.set_result(spawned)
            else:  # the caller gave up (cancelled): don't leave an orphan behind
                kill(spawned)
                spawned.close()
        elif op == "spawn_failed":
            future = self._pending.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_exception(LaunchError(f"fork failed: {message['message']}"))
        elif op == "exited":
            exit_future = self._exits.pop(int(message["pid"]), None)
            if exit_future is not None and not exit_future.done():
                exit_future.set_result(int(message["code"]))
        for fd in fds:
            os.close(fd)

    def _on_lost(self, expected: bool) -> None:
        """The fork server is gone: its workers die with it (SIGKILL by parent-death signal)."""
        if self._control is not None:
            asyncio.get_running_loop().remove_reader(self._control)
            self._control.close()
            self._control = None
            if not expected:
                logger.warning(
                    "fork server [%s] exited; the next sandbox starts a new one", self.pid
                )
        gone = LaunchError("the fork server exited")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(gone)
        for exit_future in self._exits.values():
            if not exit_future.done():
                exit_future.set_result(-signal.SIGKILL)
        self._pending.clear()
        self._exits.clear()

    async def stop(self) -> None:
        """Close the control socket: the fork server kills its workers and exits."""
        self._on_lost(expected=True)
        process, self._process = self._process, None
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("fork server [%d] did not exit; killing it", process.pid)
            process.kill()
            await process.wait()


def kill(spawned: Spawned, signum: int = signal.SIGKILL) -> None:
    """Signal a worker through its pidfd (never a recycled pid); a dead worker is no error."""
    if spawned.pidfd < 0:
        return
    with contextlib.suppress(ProcessLookupError, OSError):
        signal.pidfd_send_signal(spawned.pidfd, signum)
