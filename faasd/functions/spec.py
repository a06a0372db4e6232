"""What a deployed function is: its settings, its tensors, and one installed version.

Shared by the loader (directory -> spec), the registry (versions on disk), the sandboxes (what
to load) and the API (what to validate a request against). Pure data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

#: Open Inference Protocol datatypes and the numpy dtypes they travel as.
V2_TO_NUMPY: Mapping[str, str] = MappingProxyType(
    {
        "BOOL": "bool",
        "UINT8": "uint8",
        "UINT16": "uint16",
        "UINT32": "uint32",
        "UINT64": "uint64",
        "INT8": "int8",
        "INT16": "int16",
        "INT32": "int32",
        "INT64": "int64",
        "FP16": "float16",
        "FP32": "float32",
        "FP64": "float64",
        "BYTES": "object",
    }
)
NUMPY_TO_V2: Mapping[str, str] = MappingProxyType({v: k for k, v in V2_TO_NUMPY.items()})

#: Function names: DNS-label-like, as OpenFaaS and Kubernetes accept them.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. `shape` uses -1 for a dynamic dimension (batch included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> str:
        return V2_TO_NUMPY[self.datatype]


@dataclass(frozen=True)
class FunctionSettings:
    """A function's faasd.yaml, merged over the daemon's defaults (configs/faasd.yaml).

    `max_batch_size` 1 means no dynamic batching; `vgpu` 0 means CPU only; `gpu_memory_mb` 0
    means the GPU slice's own memory (a MIG instance's, or an MPS share's g/7 of the GPU's);
    `max_pids` counts the sandbox's processes and threads together.
    `max_image_pixels` bounds what an image body may declare (checked before any decoding);
    `idempotent` False turns off the retry of batch-mates when a sandbox dies mid-batch.
    """

    timeout_s: float = 30.0
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0
    vcpu: int = 1
    vgpu: int = 0
    memory_mb: int = 1024
    gpu_memory_mb: int = 0
    #: processes and threads one sandbox may have (its cgroup's pids.max and its uid's
    #: RLIMIT_NPROC): onnxruntime's threads and a handler's helpers; a fork loop stops there
    max_pids: int = 64
    min_instances: int = 0
    max_instances: int = 4
    keep_alive_s: float = 300.0
    slo_ms: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    max_image_pixels: int = 25_000_000
    #: the sandbox shares the host's network (default: a network namespace with nothing in it)
    network: bool = False
    #: running a call twice is harmless: an async call cut short by a restart runs again, and
    #: batch-mates of a call that killed its sandbox are retried (false: neither, saying why)
    idempotent: bool = True


@dataclass(frozen=True)
class FunctionVersion:
    """One installed, immutable version of a function (`<state>/functions/<name>/<version>/`).

    `inputs`/`outputs` come from loading the model in a sandbox at deploy time. `batched` is
    True when every input's first dimension is dynamic, so calls can be batched along it.
    """

    name: str
    version: int
    directory: Path
    model_path: Path
    settings: FunctionSettings
    handler_path: Path | None = None
    labels_path: Path | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batched: bool = False
    deployed_at: float = 0.0
    # What the handler defines, as the sandbox found at deploy time (recorded by the registry).
    has_preprocess: bool = False
    has_postprocess: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What loading a model (and its handler) in a sandbox revealed, recorded at deploy time."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool
    has_preprocess: bool = False
    has_postprocess: bool = False
