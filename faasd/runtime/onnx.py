"""onnxruntime behind one importer: session creation, model inspection, run.

This is the only module of the project that imports onnxruntime (STYLE rule 12). Sessions are
created with the sandbox's thread budget: intra-op threads = vcpu, inter-op threads = 1, and
spinning off, because spinning threads burn shared cores while they wait for work (measured on
2 cores: 45 ms of CPU per squeezenet call with spinning, 18 ms without; reference/peers.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from faasd.functions.spec import TensorSpec

#: ONNX tensor element types (as onnxruntime names them) to Open Inference Protocol datatypes.
ONNX_TO_V2: Mapping[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class ModelLoadError(Exception):
    """onnxruntime could not load the model file; the message is onnxruntime's own."""


class RunError(Exception):
    """onnxruntime rejected the inputs of one run (wrong shape, dtype, missing input)."""


class DeviceError(Exception):
    """The GPU failed during a run (a CUDA, cuBLAS or cuDNN error): the sandbox's CUDA context
    cannot be trusted any more, so the worker exits and the pool replaces it."""


#: What onnxruntime's CUDA provider says when the device, not the input, failed.
_DEVICE_FAILURES = ("CUDA failure", "CUDA error", "cudaError", "CUBLAS failure",
                    "CUDNN failure", "CUDNN_STATUS", "CURAND failure", "CUFFT failure")


def is_device_failure(message: str) -> bool:
    return any(marker in message for marker in _DEVICE_FAILURES)


def choose_providers(vgpu: int, available: Sequence[str] | None = None) -> list[str]:
    """The `auto` provider choice: CUDA only when a GPU share is asked for and CUDA exists."""
    have = ort.get_available_providers() if available is None else list(available)
    if vgpu > 0 and CUDA_PROVIDER in have:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def providers_for(
    vgpu: int, cuda_options: Mapping[str, Any] | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """`choose_providers`, with the CUDA provider's options when CUDA is chosen."""
    chosen = choose_providers(vgpu)
    if cuda_options and chosen[0] == CUDA_PROVIDER:
        return [(CUDA_PROVIDER, dict(cuda_options)), CPU_PROVIDER]
    return list(chosen)


def preload_cuda() -> bool:
    """Map the CUDA and cuDNN libraries of onnxruntime-gpu (ORT >= 1.21, `preload_dlls`) into
    this process without initialising CUDA, so that sandboxes forked from it find them loaded.
    False, having done nothing, where this onnxruntime has no CUDA provider. Safe before a
    fork: it only loads libraries (no CUDA call), unlike creating a CUDA session."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or CUDA_PROVIDER not in ort.get_available_providers():
        return False
    try:
        preload()
    except Exception:  # a missing wheel: the CUDA provider reports it when a session starts
        return False
    return True


def session_options(vcpu: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, vcpu)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return options


def _spec(node: Any) -> TensorSpec:
    datatype = ONNX_TO_V2.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {node.name!r} has type {node.type}, which faasd cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(name=node.name, datatype=datatype, shape=shape)


@dataclass(frozen=True)
class OnnxModel:
    """A loaded model: its session and what it takes and gives.

    `batched` is True when every input's first dimension is dynamic, so calls can be stacked
    along it.
    """

    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool
    #: run through an I/O binding (what a CUDA session does: inputs are bound once from host
    #: memory and outputs land in host buffers onnxruntime allocates, no extra staging copy)
    io_binding: bool = False

    @classmethod
    def load(
        cls,
        path: Path,
        vcpu: int = 1,
        vgpu: int = 0,
        cuda_options: Mapping[str, Any] | None = None,
    ) -> OnnxModel:
        """A session on the CPU, or with CUDA first when `vgpu` > 0 and onnxruntime has it
        (`cuda_options`: the CUDA provider's options). onnxruntime may still fall back to the
        CPU without an error: `providers` says what the session really uses."""
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=session_options(vcpu),
                providers=providers_for(vgpu, cuda_options),
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise ModelLoadError(str(exc).strip()) from exc
        inputs = tuple(_spec(node) for node in session.get_inputs())
        outputs = tuple(_spec(node) for node in session.get_outputs())
        batched = bool(inputs) and all(spec.shape and spec.shape[0] == -1 for spec in inputs)
        on_cuda = session.get_providers()[:1] == [CUDA_PROVIDER]
        return cls(session=session, inputs=inputs, outputs=outputs, batched=batched,
                   io_binding=on_cuda)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses, first the one that runs the model."""
        return list(self.session.get_providers())

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session.run; RunError carries onnxruntime's message for bad inputs, DeviceError
        a GPU failure, MemoryError an allocation that failed."""
        names = self.output_names
        try:
            values = self._bound_run(names, feeds) if self.io_binding else self.session.run(
                names, dict(feeds))
        except Exception as exc:
            message = str(exc).strip()
            if self.io_binding and is_device_failure(message):
                raise DeviceError(message) from exc
            if "bad_alloc" in message or "Failed to allocate memory" in message:
                raise MemoryError(message) from exc  # under RLIMIT_AS: out of memory, not bad input
            raise RunError(message) from exc
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def _bound_run(self, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[Any]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())
