"""One sandbox as the daemon sees it: start, call, ping, terminate, kill, join, stop.

Supervision follows uvicorn's worker processes: a sandbox that does not answer in time is
killed through its pidfd, joined (its exit code comes from the fork server, its parent), logged
with its pid, and dropped; the pool starts a new one for the next call. A worker's stderr is
relayed line by line into the daemon's log with the function's name and the worker's pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from faasd.functions.spec import ModelInfo
from faasd.sandbox import cgroups, channel, framing, protocol
from faasd.sandbox.cgroups import SandboxGroups
from faasd.sandbox.launcher import Launcher, Spawned, kill
from faasd.sandbox.lines import LineBuffer
from faasd.sandbox.sharedmem import SharedArea, SharedPair, create_fd

logger = logging.getLogger("faasd.sandbox")

#: How long a dead worker's exit code may take to arrive from the fork server.
EXIT_REPORT_TIMEOUT_S = 2.0
STOP_GRACE_S = 1.0


class State(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"


class SandboxDied(Exception):
    """The worker's end of the channel closed: it exited or was killed."""


class ProtocolViolation(SandboxDied):
    """The worker sent what no worker of faasd's sends (garbage, a frame over the channel's
    limit); it has been killed. The message says what it sent."""


class LoadFailed(Exception):
    """The worker could not load its function; `kind` says which part (protocol.FAILED_*)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Death:
    """How a worker ended: exit code (negative: signal; None: unknown) and whether memory did it."""

    code: int | None
    out_of_memory: bool

    def describe(self) -> str:
        if self.out_of_memory:
            return "ran out of memory and was killed"
        if self.code is None:
            return "stopped answering"
        if self.code < 0:
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = str(-self.code)
            return f"was killed by {name}"
        return f"exited with code {self.code}"


def sandbox_pid(keeper: int) -> int | None:
    """A confined sandbox's pid: the one child of the one child of the process its fork server
    forked (its keeper, then its PID namespace's init: `faasd.sandbox.identity`); None where
    the kernel does not list them so."""
    pid = keeper
    for _ in range(2):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        if len(children) != 1:
            return None
        pid = int(children[0])
    return pid


#: What closing a relay still reads of its pipe: what the worker wrote just before it ended,
#: but not forever from a process of the sandbox's that lives on and keeps writing.
_DRAIN_BYTES = 2**20


class _StderrRelay:
    """Logs a worker's stderr, one record per line (at most `lines.MAX_LINE_BYTES` of it),
    tagged with its function and pid."""

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label
        self.lines = LineBuffer()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self.on_readable)

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._log(self.lines.feed(data))

    def _log(self, lines: list[str]) -> None:
        for line in lines:
            logger.info("%s: %s", self.label, line)

    def close(self) -> None:
        if self.fd < 0:
            return
        drained = 0
        with contextlib.suppress(OSError):  # what the worker wrote just before it exited
            while drained < _DRAIN_BYTES and (data := os.read(self.fd, 65536)):
                drained += len(data)
                self._log(self.lines.feed(data))
        self._log(self.lines.finish())
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1


class SandboxProcess:
    """A worker process serving one function version at one configuration."""

    def __init__(
        self,
        sandbox_id: str,
        spawned: Spawned,
        chan: channel.AsyncChannel,
        relay: _StderrRelay,
        groups: SandboxGroups | None,
        tmp_dir: Path | None,
        shared: SharedPair | None = None,
        confined: bool = False,
    ) -> None:
        self.id = sandbox_id
        #: A confined worker runs as the child of the process its fork server forked
        #: (`faasd.sandbox.identity`): `pid` names it once it has said anything.
        self.confined = confined
        self._pid = spawned.pid
        #: a pidfd of that process once it is known (never a recycled pid)
        self._pidfd = -1
        #: Where large tensors cross (see `faasd.sandbox.sharedmem`); None: all in frames.
        self.shared = shared
        self.spawned = spawned
        self.channel = chan
        self.relay = relay
        self.groups = groups
        self.tmp_dir = tmp_dir
        self.state = State.STARTING
        self.info: ModelInfo | None = None
        self.load_s = 0.0
        self.loading: str | None = None
        #: where it runs: "cpu", or the label of its GPU slice (set by the spawner)
        self.device = "cpu"

    @property
    def pid(self) -> int:
        """The process that runs the function (signals go to the forked one, `spawned`)."""
        return self._pid

    @classmethod
    async def start(
        cls,
        launcher: Launcher,
        sandbox_id: str,
        spec: protocol.WorkerSpec,
        groups: SandboxGroups | None,
        tmp_dir: Path | None,
        max_answer_bytes: int = channel.DEFAULT_MAX_FRAME_BYTES,
    ) -> SandboxProcess:
        """Fork a worker; it is STARTING until `wait_ready`. A frame from it over
        `max_answer_bytes` is a `ProtocolViolation`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stderr_r, stderr_w = os.pipe()
        shared = _shared_pair(sandbox_id, spec)
        try:
            for sock in (ours, theirs):
                channel.tune(sock)
            shared_fds = (shared.out.fd, shared.into.fd) if shared is not None else ()
            cgroup_fds = tuple(cgroups.open_procs(groups))
            try:
                spawned = await launcher.spawn(spec, theirs, stderr_w, shared_fds, cgroup_fds)
            finally:
                for fd in cgroup_fds:
                    os.close(fd)
        except BaseException:
            ours.close()
            os.close(stderr_r)
            if shared is not None:
                shared.close()
            raise
        finally:
            theirs.close()
            os.close(stderr_w)
        ours.setblocking(False)
        try:
            chan = await channel.AsyncChannel.open(ours, shared, max_answer_bytes)
        except BaseException:
            kill(spawned, signal.SIGKILL)
            spawned.close()
            ours.close()
            os.close(stderr_r)
            if shared is not None:
                shared.close()
            raise
        relay = _StderrRelay(stderr_r, f"{spec.name} v{spec.version} [{spawned.pid}]")
        return cls(sandbox_id, spawned, chan, relay, groups, tmp_dir, shared, bool(spec.uid))

    async def wait_ready(self, timeout_s: float) -> ModelInfo:
        """The worker's model info once loaded. LoadFailed if it says why it could not load;
        SandboxDied if it died loading; TimeoutError past `timeout_s`. `loading` says what
        the worker was at (protocol.STAGE_*) when it last said so."""
        async with asyncio.timeout(timeout_s):
            message = await self._recv()
            if self.confined:  # it has confined itself: its keeper has forked it
                self._find_sandbox()
            while message.get("op") == "loading":
                self.loading = str(message.get("stage"))
                message = await self._recv()
        if message.get("op") == "failed":
            raise LoadFailed(str(message["kind"]), str(message["message"]))
        self.info = protocol.info_from_wire(message["info"])
        self.load_s = float(message.get("load_s", 0.0))
        self.state = State.IDLE
        return self.info

    async def _recv(self) -> dict[str, Any]:
        try:
            message = await self.channel.recv()
        except framing.FrameError as exc:
            # It is alive and sends what no worker sends: nothing more it says can be trusted.
            self.kill()
            raise ProtocolViolation(_violation(exc)) from exc
        except OSError as exc:  # ChannelClosed, reset
            raise SandboxDied(str(exc)) from exc
        if not isinstance(message, dict):
            raise SandboxDied(f"worker answered {type(message).__name__}, not a message")
        return message

    async def call(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait for its reply; TimeoutError past `timeout_s`."""
        async with asyncio.timeout(timeout_s):  # no extra task per call, unlike wait_for
            try:
                await self.channel.send(message)
            except OSError as exc:
                raise SandboxDied(str(exc)) from exc
            reply: dict[str, Any] = await self._recv()
        if self.shared is not None:  # the reply's tensors were copied out; the worker waits
            self.shared.trim()
        return reply

    async def ping(self, timeout_s: float) -> bool:
        try:
            reply = await self.call({"op": "ping"}, timeout_s)
        except (TimeoutError, SandboxDied):
            return False
        return reply.get("op") == "pong"

    def terminate(self) -> None:
        kill(self.spawned, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process that runs the function where it is known, else the forked one.
        A confined sandbox's keeper and init end only after it has (they end as it ended), so
        once `join` sees the forked one gone, the sandbox is gone too; killed the other way
        round, the sandbox would outlive its keeper for a moment."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        else:
            kill(self.spawned, signal.SIGKILL)

    def _find_sandbox(self) -> None:
        pid = sandbox_pid(self.spawned.pid)
        if pid is None:
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            return  # it has ended already: the forked one follows it
        self._pid = pid
        self.relay.label = self.relay.label.replace(f"[{self.spawned.pid}]", f"[{pid}]")

    async def join(self, timeout_s: float) -> int | None:
        """The exit code once the worker has ended, or None if it has not within `timeout_s`."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.spawned.exited), timeout_s)
        except TimeoutError:
            return None

    async def death(self) -> Death:
        """How the (dead or dying) worker ended; kills it if it has not ended yet."""
        code = await self.join(EXIT_REPORT_TIMEOUT_S)
        if code is None:
            self.kill()
            code = await self.join(EXIT_REPORT_TIMEOUT_S)
        oom = code == protocol.OUT_OF_MEMORY_EXIT or (
            self.groups is not None and self.groups.oom_killed()
        )
        return Death(code=code, out_of_memory=oom)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Ask the worker to exit (closing its channel), kill it after `grace_s`, clean up."""
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self.channel.close()  # the worker reads EOF and exits
        if await self.join(grace_s) is None:
            self.kill()
            if await self.join(EXIT_REPORT_TIMEOUT_S) is None:
                logger.warning("sandbox [%d] did not exit after SIGKILL", self.pid)
        self.release()

    def release(self) -> None:
        """Free what the sandbox held in the daemon: socket, pidfd, stderr pipe, groups, tmp."""
        self.state = State.STOPPED
        self.channel.close()
        self.relay.close()
        self.spawned.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self.shared is not None:  # results were copied out: nothing views the mappings
            self.shared.close()
            self.shared = None
        if self.groups is not None:
            self.groups.remove()
            self.groups = None
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None


def _violation(exc: framing.FrameError) -> str:
    if isinstance(exc, framing.FrameTooLarge):
        return (f"it sent a frame of {exc.body_bytes} bytes, over the limit of "
                f"{exc.limit_bytes / 2**20:g} MiB on a sandbox's answer (max_answer_mb)")
    return f"it sent what is not a frame: {exc}"


def _shared_pair(sandbox_id: str, spec: protocol.WorkerSpec) -> SharedPair | None:
    """The daemon's side: it writes the request area and reads (copying) the response area."""
    if spec.shared_cap_bytes <= 0:
        return None
    cap, threshold = spec.shared_cap_bytes, spec.shared_threshold_bytes
    request = SharedArea(create_fd(f"{sandbox_id}-request"), cap, threshold)
    response = SharedArea(create_fd(f"{sandbox_id}-response"), cap, threshold)
    return SharedPair(out=request, into=response, copy_in=True)
