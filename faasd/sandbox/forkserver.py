"""The fork server: a process that has imported onnxruntime and numpy once and forks workers.

Started by the pool as `python -m faasd.sandbox.forkserver FD`, where FD is its end of a
SOCK_SEQPACKET control socket. Each control message is one msgpack map:

- daemon -> server `{"op": "spawn", "id", "spec", "shared": N}` with file descriptors
  attached (SCM_RIGHTS): the worker's end of its socketpair, the write end of its stderr pipe,
  N (0 or 2) shared-memory memfds (request, response), then one `cgroup.procs` file of each of
  the sandbox's cgroups, opened for writing by the daemon: the worker joins them by writing 0
  (itself), which works from inside a box whose file system has no `/sys/fs/cgroup`;
- server -> daemon `{"op": "spawned", "id", "pid"}` with the worker's pidfd attached, or
  `{"op": "spawn_failed", "id", "message"}`;
- server -> daemon `{"op": "exited", "pid", "code"}` when a worker ends (code < 0: killed by
  signal -code), so the daemon learns how a sandbox died although it is not the parent.

Pids in messages are the fork server's own; inside a box (`faasd.sandbox.bubblewrap`) those
are its PID namespace's, and the daemon reads the host's from the pidfd.

The server forks from a single thread (no thread of onnxruntime exists before a session is
created), reaps its children on SIGCHLD, and when the daemon closes the control socket it kills
every worker and exits.

It never initialises CUDA (a CUDA context does not survive a fork): with onnxruntime-gpu it
only maps the CUDA libraries (`preload_cuda`); it never touches NVML and never holds a GPU
slice's environment. A worker sets its slice's environment first thing after the fork, before
its session exists.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys
from typing import Any

import msgpack
import numpy  # noqa: F401  imported here so every worker inherits it
import onnxruntime  # noqa: F401  the import a cold start must not pay

from faasd.runtime import onnx
from faasd.sandbox import descriptors, identity, protocol, worker

# Handlers decode images with pillow; importing it once here saves each worker ~30 ms.
with contextlib.suppress(ImportError):
    import PIL.Image  # noqa: F401

MAX_CONTROL_BYTES = 1 << 20
#: socket, stderr, two memfds and a cgroup.procs per controller, with room to spare
MAX_FDS = 16


def fork_sharing_memory() -> int:
    """`os.fork()`, after taking every object alive (the imported modules above all) out of
    the garbage collector's view. A collection in the child then never writes to those
    objects' headers, so the pages that hold them stay shared with this process instead of
    being copied on write: a full collection in a fresh worker copies about 0.5 MB of them
    instead of 7.4 MB."""
    gc.freeze()
    return os.fork()


class ForkServer:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.children: set[int] = set()
        #: the uid of each confined child, swept when it ends (`faasd.sandbox.identity`)
        self.uids: dict[int, int] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        socket.send_fds(self.control, [msgpack.packb(message)], fds or [])

    def serve(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.send({"op": "ready", "pid": os.getpid()})
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    data, fds, _, _ = socket.recv_fds(self.control, MAX_CONTROL_BYTES, MAX_FDS)
                    if not data:
                        return
                    self.handle(msgpack.unpackb(data, raw=False), fds)
                else:
                    self.reap()

    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        shared = message.get("shared", 0)
        if message.get("op") != "spawn" or shared not in (0, 2) or len(fds) < 2 + shared:
            for fd in fds:
                os.close(fd)
            return
        sock_fd, stderr_fd = fds[:2]
        shared_fds, cgroup_fds = fds[2:2 + shared], fds[2 + shared:]
        spec = protocol.WorkerSpec.from_wire(message["spec"])
        try:
            pid = fork_sharing_memory()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self.send({"op": "spawn_failed", "id": message["id"], "message": str(exc)})
            return
        if pid == 0:
            self.become_worker(sock_fd, stderr_fd, spec, tuple(shared_fds), tuple(cgroup_fds))
        for fd in fds:
            os.close(fd)
        self.children.add(pid)
        if spec.uid:
            self.uids[pid] = spec.uid
        pidfd = os.pidfd_open(pid)
        try:
            self.send({"op": "spawned", "id": message["id"], "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def become_worker(
        self,
        sock_fd: int,
        stderr_fd: int,
        spec: protocol.WorkerSpec,
        shared_fds: tuple[int, ...],
        cgroup_fds: tuple[int, ...],
    ) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.control.close()
        try:
            worker.main(sock_fd, stderr_fd, spec, shared_fds, cgroup_fds)
        finally:
            os._exit(1)  # never return into the fork server's loop

    def reap(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            uid = self.uids.pop(pid, 0)
            if uid:  # whatever the worker started dies with it
                identity.sweep(uid)
            self.send({"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def shutdown(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for uid in self.uids.values():
            identity.sweep(uid)


def main(argv: list[str]) -> int:
    control_fd = int(argv[1])
    # Before anything is forked: only stdio and the control socket of what the daemon left
    # open reach here (`faasd.sandbox.descriptors`).
    descriptors.keep_only({0, 1, 2, control_fd}, inherited_only=True)
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    onnx.preload_cuda()  # GPU builds: the CUDA libraries a GPU sandbox's session needs
    server = ForkServer(control)
    try:
        server.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon went away
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
