"""The worker: what a forked sandbox process does, from confinement to its serve loop.

Runs in a child of the fork server, which has already imported onnxruntime, numpy and this
module, so a cold start costs the confinement, the model's session creation and the handler's
import. The worker never returns into the fork server: every path ends in `os._exit`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from faasd.functions.spec import ModelInfo
from faasd.runtime.onnx import CUDA_PROVIDER, ModelLoadError, OnnxModel, choose_providers
from faasd.sandbox import cgroups, channel, protocol
from faasd.sandbox.batching import Handler, execute
from faasd.sandbox.sharedmem import SharedArea, SharedPair

logger = logging.getLogger("faasd.sandbox")

_PR_SET_PDEATHSIG = 1


class HandlerLoadError(Exception):
    """handler.py could not be imported, or its hooks are not functions."""


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the fork server goes, so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the socket's EOF still ends an idle worker


def confine(spec: protocol.WorkerSpec) -> None:
    """Join the sandbox's cgroups, or fall back to CPU affinity and an address-space limit."""
    if spec.cgroup_procs:
        cgroups.join(spec.cgroup_procs)
        return
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    if spec.address_space_bytes:
        limit = spec.address_space_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _handler_error(path: Path, exc: BaseException) -> HandlerLoadError:
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename) == path:
            where = f" (line {frame.lineno})"
            break
    if isinstance(exc, SyntaxError) and exc.lineno:
        where = f" (line {exc.lineno})"
    return HandlerLoadError(f"{type(exc).__name__}: {exc}{where}")


def load_handler(path: Path | None) -> Handler:
    if path is None:
        return Handler()
    module_spec = importlib.util.spec_from_file_location("faasd_function_handler", path)
    if module_spec is None or module_spec.loader is None:
        raise HandlerLoadError(f"{path.name} is not a Python module")
    module: ModuleType = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise _handler_error(path, exc) from exc
    hooks: dict[str, Any] = {}
    for hook in ("preprocess", "postprocess"):
        value = getattr(module, hook, None)
        if value is not None and not callable(value):
            raise HandlerLoadError(f"{hook} must be a function, not {type(value).__name__}")
        hooks[hook] = value
    return Handler(preprocess=hooks["preprocess"], postprocess=hooks["postprocess"])


def _prepare_process(spec: protocol.WorkerSpec) -> None:
    os.environ.update(spec.env)
    if spec.tmp_dir:
        os.environ["TMPDIR"] = spec.tmp_dir
    os.chdir(spec.directory)
    sys.path.insert(0, spec.directory)
    for stream in (sys.stdout, sys.stderr):  # a handler's print() reaches the log at once
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


class _LoadFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _load_parts(
    spec: protocol.WorkerSpec, announce: Callable[[str], None]
) -> tuple[OnnxModel, Handler]:
    try:
        confine(spec)
        _prepare_process(spec)
    except OSError as exc:
        raise _LoadFailed(protocol.FAILED_SANDBOX, f"could not confine the sandbox: {exc}") from exc
    if spec.vgpu > 0 and CUDA_PROVIDER not in choose_providers(spec.vgpu):
        logger.warning(
            "vgpu=%d asked for, but onnxruntime has no CUDA here: running on CPU", spec.vgpu
        )
    announce(protocol.STAGE_MODEL)
    try:
        model = OnnxModel.load(Path(spec.model_path), spec.vcpu, spec.vgpu)
    except ModelLoadError as exc:
        raise _LoadFailed(protocol.FAILED_MODEL, str(exc)) from exc
    if spec.handler_path:
        announce(protocol.STAGE_HANDLER)
    try:
        handler = load_handler(Path(spec.handler_path) if spec.handler_path else None)
    except HandlerLoadError as exc:
        raise _LoadFailed(protocol.FAILED_HANDLER, str(exc)) from exc
    return model, handler


def _load(sock: socket.socket, spec: protocol.WorkerSpec) -> tuple[OnnxModel, Handler] | None:
    """Load model and handler and tell the daemon; None (after telling it why) on failure."""
    started = time.perf_counter()
    try:
        model, handler = _load_parts(
            spec, lambda stage: channel.send(sock, {"op": "loading", "stage": stage}))
    except _LoadFailed as failed:
        channel.send(sock, {"op": "failed", "kind": failed.kind, "message": str(failed)})
        return None
    info = ModelInfo(
        inputs=model.inputs,
        outputs=model.outputs,
        batched=model.batched,
        has_preprocess=handler.preprocess is not None,
        has_postprocess=handler.postprocess is not None,
    )
    load_s = time.perf_counter() - started
    channel.send(sock, {"op": "ready", "info": protocol.info_to_wire(info), "load_s": load_s})
    return model, handler


def _serve(
    sock: socket.socket, model: OnnxModel, handler: Handler, shared: SharedPair | None
) -> None:
    receiver = channel.Receiver(sock, shared)
    while True:
        message = receiver.recv()
        op = message.get("op")
        if op == "run":
            started = time.perf_counter()
            items = protocol.items_from_wire(message["items"])
            results = execute(model, handler, items, bool(message.get("postprocess", True)))
            reply = {
                "op": "result",
                "results": protocol.results_to_wire(results),
                "exec_s": time.perf_counter() - started,
            }
            del items, message  # inputs in the request area are not read past this point
            channel.send(sock, reply, shared)
        elif op == "ping":
            channel.send(sock, {"op": "pong"})
        elif op == "stop":
            return
        else:
            raise ValueError(f"unknown operation {op!r}")


def _shared_pair(spec: protocol.WorkerSpec, shared_fds: tuple[int, ...]) -> SharedPair | None:
    """The worker's side: it reads the request area and writes the response area."""
    if len(shared_fds) != 2:
        return None
    request_fd, response_fd = shared_fds
    cap, threshold = spec.shared_cap_bytes, spec.shared_threshold_bytes
    return SharedPair(
        out=SharedArea(response_fd, cap, threshold),
        into=SharedArea(request_fd, cap, threshold),
        copy_in=False,
    )


def main(
    sock_fd: int, stderr_fd: int, spec: protocol.WorkerSpec, shared_fds: tuple[int, ...] = ()
) -> NoReturn:
    """The forked child's whole life. Exit 0 when told to stop or when the daemon lets go."""
    os.dup2(stderr_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    _die_with_parent()
    code = 0
    try:
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(True)
        loaded = _load(sock, spec)
        if loaded is not None:
            _serve(sock, *loaded, _shared_pair(spec, shared_fds))
    except ConnectionError:  # the daemon closed our channel (ChannelClosed) or went away
        pass
    except MemoryError:
        code = protocol.OUT_OF_MEMORY_EXIT
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)
