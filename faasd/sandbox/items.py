"""What goes into a sandbox and what comes out: one item per call, results in the same order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorItem:
    """One call's input tensors, leading batch dimension included."""

    tensors: dict[str, np.ndarray]


@dataclass(frozen=True)
class BodyItem:
    """One call's raw body, for the handler's `preprocess(body, content_type)`."""

    body: bytes
    content_type: str


Item = TensorItem | BodyItem


@dataclass(frozen=True)
class TensorResult:
    tensors: dict[str, np.ndarray]


@dataclass(frozen=True)
class BodyResult:
    """The handler's `postprocess` output, serialised (dict/list as JSON, str as text)."""

    body: bytes
    content_type: str


@dataclass(frozen=True)
class ItemFailure:
    """This call's input was bad (400) or its handler raised (502); other items are unaffected."""

    status: int
    message: str


ItemResult = TensorResult | BodyResult | ItemFailure


@dataclass(frozen=True)
class Execution:
    """One batch's outcome. `exec_s` is measured in the sandbox (preprocess + run + postprocess).
    `start_s` is how long the cold start took (fork, confine, load the model), 0 when warm."""

    results: list[ItemResult]
    cold_start: bool
    exec_s: float
    sandbox_pid: int
    start_s: float = 0.0


@dataclass(frozen=True)
class PoolStats:
    """Sandboxes alive (starting, busy or idle) and idle, by function; counters since start."""

    alive: Mapping[str, int] = field(default_factory=dict)
    idle: Mapping[str, int] = field(default_factory=dict)
    cold_starts: int = 0
    crashes: int = 0
    timeouts: int = 0
