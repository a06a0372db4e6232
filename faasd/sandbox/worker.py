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
from faasd.sandbox import cgroups, channel, descriptors, environ, identity, protocol
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


#: A sandbox's oom_score_adj: under memory pressure the kernel kills a sandbox (the largest
#: first) before anything else, the daemon least of all (its unit sets -500, which a sandbox
#: would inherit). Raising it is always permitted.
OOM_SCORE_ADJ = 1000


def _first_to_go_out_of_memory() -> None:
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write(str(OOM_SCORE_ADJ))


def confine(spec: protocol.WorkerSpec, cgroup_fds: tuple[int, ...]) -> None:
    """Join the sandbox's cgroups (their `cgroup.procs`, opened by the daemon), or fall back to
    CPU affinity and an address-space limit."""
    if cgroup_fds:
        cgroups.join(cgroup_fds)
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


#: The whole environment of a sandbox, besides what its faasd.yaml `env` names.
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def sandbox_environment(spec: protocol.WorkerSpec) -> dict[str, str]:
    """Only PATH, HOME, TMPDIR and LANG, then the function's `env`: nothing of the daemon's
    (its tokens, credentials or paths) reaches a handler."""
    tmp = "/tmp" if spec.uid or not spec.tmp_dir else spec.tmp_dir
    return {"PATH": BASE_PATH, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", **spec.env}


def _set_environment(spec: protocol.WorkerSpec) -> None:
    """The sandbox's environment only, its GPU slice's last (the function's env cannot move
    it off its slice). Set while still root: publishing it for /proc may need privileges the
    worker gives up with its uid."""
    os.environ.clear()
    os.environ.update(sandbox_environment(spec))
    os.environ.update(spec.gpu_env)
    if spec.gpu_env:  # an operator (or a test) sees the slice in /proc/PID/environ
        environ.publish()


def _prepare_process(spec: protocol.WorkerSpec) -> None:
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
    spec: protocol.WorkerSpec, cgroup_fds: tuple[int, ...], announce: Callable[[str], None]
) -> tuple[OnnxModel, Handler]:
    try:
        _first_to_go_out_of_memory()  # before the model's memory is the sandbox's
        confine(spec, cgroup_fds)
        _set_environment(spec)
        if spec.uid:
            identity.become(spec.uid, spec.max_pids, spec.network, spec.tmp_mb)
            _die_with_parent()  # a change of uid clears the parent-death signal
        _prepare_process(spec)
    except OSError as exc:
        raise _LoadFailed(protocol.FAILED_SANDBOX, f"could not confine the sandbox: {exc}") from exc
    announce(protocol.STAGE_MODEL)
    model = _load_model(spec)
    if spec.handler_path:
        announce(protocol.STAGE_HANDLER)
    try:
        handler = load_handler(Path(spec.handler_path) if spec.handler_path else None)
    except HandlerLoadError as exc:
        raise _LoadFailed(protocol.FAILED_HANDLER, str(exc)) from exc
    return model, handler


def _load_model(spec: protocol.WorkerSpec) -> OnnxModel:
    """The session: on the CPU, or with CUDA first for a sandbox bound to a real GPU slice,
    which fails (FAILED_GPU, gpu_unavailable) when onnxruntime fell back to the CPU — it
    does so silently when the CUDA provider cannot load. A fake slice runs on the CPU."""
    bound = bool(spec.gpu_env)
    vgpu = spec.vgpu
    if bound and spec.gpu_fake:
        logger.info("bound to a fake GPU slice (CUDA_VISIBLE_DEVICES=%s): running on the CPU",
                    spec.gpu_env.get("CUDA_VISIBLE_DEVICES", ""))
        vgpu = 0
    elif vgpu > 0 and not bound and CUDA_PROVIDER not in choose_providers(vgpu):
        logger.warning("vgpu=%d asked for, but onnxruntime has no CUDA here: running on CPU", vgpu)
    try:
        model = OnnxModel.load(Path(spec.model_path), spec.vcpu, vgpu, spec.cuda_options or None)
    except ModelLoadError as exc:
        raise _LoadFailed(protocol.FAILED_MODEL, str(exc)) from exc
    if bound and vgpu > 0 and model.providers[:1] != [CUDA_PROVIDER]:
        raise _LoadFailed(
            protocol.FAILED_GPU,
            f"gpu_unavailable: onnxruntime runs this model on {model.providers} instead of "
            "CUDA (install the gpu extra: onnxruntime-gpu with CUDA 12 and cuDNN 9, and check "
            "the NVIDIA driver)",
        )
    return model


def _load(
    sock: socket.socket, spec: protocol.WorkerSpec, cgroup_fds: tuple[int, ...]
) -> tuple[OnnxModel, Handler] | None:
    """Load model and handler and tell the daemon; None (after telling it why) on failure."""
    started = time.perf_counter()
    try:
        model, handler = _load_parts(
            spec, cgroup_fds, lambda stage: channel.send(sock, {"op": "loading", "stage": stage}))
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
    sock_fd: int,
    stderr_fd: int,
    spec: protocol.WorkerSpec,
    shared_fds: tuple[int, ...] = (),
    cgroup_fds: tuple[int, ...] = (),
) -> NoReturn:
    """The forked child's whole life. Exit 0 when told to stop or when the daemon lets go.

    It holds no file descriptor but stdin (/dev/null), stdout and stderr (its relay pipe),
    its channel and its shared-memory areas (and the `cgroup.procs` files it joins, closed
    once joined): nothing of its fork server's or of the daemon's."""
    os.environ.update(spec.gpu_env)  # first: nothing may initialise CUDA before the slice is set
    os.dup2(stderr_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    descriptors.stdin_from_devnull()
    descriptors.keep_only({0, 1, 2, sock_fd, *shared_fds, *cgroup_fds})
    _die_with_parent()
    code = 0
    try:
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(True)
        loaded = _load(sock, spec, cgroup_fds)
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
