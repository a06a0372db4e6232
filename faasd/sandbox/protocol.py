"""The messages daemon and worker exchange, as plain msgpack-able values. Pure.

Daemon -> worker: `run` (items, and `postprocess`: False to answer with the model's tensors
even when the handler has a postprocess), `ping`, `stop`. Worker -> daemon: `ready` (what the model
takes and gives) or `failed` (why it could not load), then one `result` per `run` and one `pong`
per `ping`. Items travel as `{"t": tensors}` or `{"b": body, "ct": content type}`; results as
`{"t": tensors}`, `{"b": body, "ct": ...}` or `{"f": [status, message]}`. Tensors of
`WorkerSpec.shared_threshold_bytes` and more cross through the sandbox's shared-memory areas
(see `faasd.sandbox.sharedmem`), the frame saying only where they lie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from faasd.functions.spec import ModelInfo, TensorSpec
from faasd.sandbox.items import (
    BodyItem,
    BodyResult,
    Item,
    ItemFailure,
    ItemResult,
    TensorItem,
    TensorResult,
)

#: A worker that ran out of memory under an rlimit (no cgroup to count OOM kills) exits so.
OUT_OF_MEMORY_EXIT = 99
#: Why a worker could not start: the model, the handler, or the sandbox itself.
FAILED_MODEL = "model"
FAILED_HANDLER = "handler"
FAILED_SANDBOX = "sandbox"
#: What a worker is loading, announced before it starts on it ({"op": "loading", "stage": ...}),
#: so that a load that hangs can be blamed on the right file.
STAGE_MODEL = "model"
STAGE_HANDLER = "handler"

#: A sandbox bound to a GPU slice whose onnxruntime session did not get CUDA.
FAILED_GPU = "gpu"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a forked worker needs to confine itself and load its function."""

    name: str
    version: int
    directory: str
    model_path: str
    handler_path: str | None
    vcpu: int
    vgpu: int
    env: Mapping[str, str] = field(default_factory=dict)
    #: Fallback confinement when no cgroup is writable: CPU affinity and RLIMIT_AS.
    cpus: tuple[int, ...] = ()
    address_space_bytes: int = 0
    tmp_dir: str | None = None
    #: Largest either shared-memory area may grow (0: no shared memory, tensors in frames).
    shared_cap_bytes: int = 0
    #: Tensors of at least this many bytes cross through shared memory.
    shared_threshold_bytes: int = 0
    #: The uid a confined worker runs as (`faasd.sandbox.identity`); 0: not confined.
    uid: int = 0
    max_pids: int = 64
    #: A confined worker keeps its box's network (`network: true`) instead of one of its own.
    network: bool = False
    #: The size of a confined worker's own `/tmp` (a tmpfs, charged to its memory).
    tmp_mb: int = 64
    #: A sandbox bound to a GPU slice: the slice's environment (set before onnxruntime
    #: touches CUDA), onnxruntime's CUDA options, and whether the slice is a fake one (then
    #: the model runs on the CPU provider). Empty `gpu_env`: not bound.
    gpu_env: Mapping[str, str] = field(default_factory=dict)
    cuda_options: Mapping[str, Any] = field(default_factory=dict)
    gpu_fake: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["env"] = dict(self.env)
        wire["gpu_env"] = dict(self.gpu_env)
        wire["cuda_options"] = dict(self.cuda_options)
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> WorkerSpec:
        fields = dict(wire)
        fields["cpus"] = tuple(fields.get("cpus", ()))
        return cls(**fields)


def items_to_wire(items: Sequence[Item]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, TensorItem):
            wire.append({"t": item.tensors})
        else:
            wire.append({"b": item.body, "ct": item.content_type})
    return wire


def items_from_wire(wire: Sequence[Mapping[str, Any]]) -> list[Item]:
    return [
        TensorItem(dict(entry["t"])) if "t" in entry else BodyItem(entry["b"], entry["ct"])
        for entry in wire
    ]


def results_to_wire(results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, TensorResult):
            wire.append({"t": result.tensors})
        elif isinstance(result, BodyResult):
            wire.append({"b": result.body, "ct": result.content_type})
        else:
            wire.append({"f": [result.status, result.message]})
    return wire


def results_from_wire(wire: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
    results: list[ItemResult] = []
    for entry in wire:
        if "t" in entry:
            results.append(TensorResult(dict(entry["t"])))
        elif "b" in entry:
            results.append(BodyResult(entry["b"], entry["ct"]))
        else:
            status, message = entry["f"]
            results.append(ItemFailure(int(status), str(message)))
    return results


def _spec_to_wire(spec: TensorSpec) -> list[Any]:
    return [spec.name, spec.datatype, list(spec.shape)]


def _spec_from_wire(wire: Sequence[Any]) -> TensorSpec:
    name, datatype, shape = wire
    return TensorSpec(name=name, datatype=datatype, shape=tuple(shape))


def info_to_wire(info: ModelInfo) -> dict[str, Any]:
    return {
        "inputs": [_spec_to_wire(s) for s in info.inputs],
        "outputs": [_spec_to_wire(s) for s in info.outputs],
        "batched": info.batched,
        "has_preprocess": info.has_preprocess,
        "has_postprocess": info.has_postprocess,
    }


def info_from_wire(wire: Mapping[str, Any]) -> ModelInfo:
    return ModelInfo(
        inputs=tuple(_spec_from_wire(s) for s in wire["inputs"]),
        outputs=tuple(_spec_from_wire(s) for s in wire["outputs"]),
        batched=bool(wire["batched"]),
        has_preprocess=bool(wire["has_preprocess"]),
        has_postprocess=bool(wire["has_postprocess"]),
    )
