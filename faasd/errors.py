"""Errors of the daemon: one rooted hierarchy, mapped to HTTP in one middleware.

Each error carries the HTTP status it maps to and a message that says what happened and what
to do. `extra` adds structured fields to the JSON body (e.g. the file a deploy error is about).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The most characters of a client-chosen name, or of an exception's text, a message repeats.
MAX_ECHO_CHARS = 200


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` as a message may repeat it: at most `limit` characters, with an ellipsis when
    cut (a name in an upload or a request body can be megabytes long)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class FaasdError(Exception):
    """Root of every error the daemon turns into a JSON `{"error": ...}` response."""

    status: int = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(FaasdError):
    """The request body or its tensors are wrong (shape, dtype, JSON, image)."""

    status = 400


class NotFound(FaasdError):
    status = 404


class MethodNotAllowed(FaasdError):
    status = 405


class Conflict(FaasdError):
    status = 409


class PayloadTooLarge(FaasdError):
    status = 413


class UnsupportedMediaType(FaasdError):
    status = 415


class Overloaded(FaasdError):
    """Queue full or shutting down; `retry_after_s` becomes the Retry-After header."""

    status = 429

    def __init__(self, message: str, retry_after_s: float = 1.0, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s


class Unavailable(Overloaded):
    status = 503


class DeployError(FaasdError):
    """A function directory that cannot be deployed: `file` names the culprit, message the fix."""

    status = 400

    def __init__(self, message: str, file: str | None = None, **extra: Any) -> None:
        super().__init__(message, file=file, **extra)
        self.file = file

    def located_in(self, directory: Path) -> DeployError:
        """The same error with a file named relative to the function (as a sandbox reports
        it) named by its full path under `directory`, in the message too; else itself."""
        if not self.file or Path(self.file).is_absolute():
            return self
        full = str(directory / self.file)
        return DeployError(self.message.replace(self.file, full, 1), file=full)


class SandboxCrashed(FaasdError):
    """The function's process died (crash, signal, out of memory) while serving the call."""

    status = 502


class FunctionError(FaasdError):
    """The function's handler raised for this input; the sandbox itself is fine."""

    status = 502


class SandboxTimeout(FaasdError):
    """The call ran past the function's timeout; its sandbox was killed and will be replaced."""

    status = 504


class InsufficientStorage(FaasdError):
    """The daemon's disk is full (ENOSPC) while installing a function; nothing was left."""

    status = 507


class GpuUnavailable(Unavailable):
    """No GPU slice of the size a sandbox needs can be given: `busy` when every such slice
    is held now (a later call may get one), else because this node has none of that size
    or its GPU is unusable (onnxruntime could not load CUDA, the GPU was lost). When busy,
    `freed_by` are the slice sizes whose release could make room (MIG: the same size only)."""

    def __init__(
        self, message: str, *, busy: bool = False, freed_by: frozenset[int] = frozenset(),
        **extra: Any,
    ) -> None:
        super().__init__(message, retry_after_s=1.0, code="gpu_unavailable", **extra)
        self.busy = busy
        self.freed_by = freed_by
