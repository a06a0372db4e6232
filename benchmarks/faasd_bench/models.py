"""The models the benchmarks serve, and the function directories they are deployed from.

- `tiny`: [N,16] -> MatMul 16x16 -> Relu, built here with onnx.helper (seeded weights), so
  that the model costs microseconds and a served call measures the platform, not the model.
- `squeezenet`: the example function's model (functions/squeezenet, built by
  functions/build_models.py), served without its handler: tensors in, tensors out.
- `wide` and `long` (for `fixed_cost.py`): one has squeezenet's input and almost no compute,
  the other a small input and a run about as long as squeezenet's, so that what a large body
  costs and what a long run costs can be told apart.

The benchmark copies get their own faasd.yaml (batching, vcpu, keep-alive) so that the
figures do not move when someone retunes an example function.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_FEATURES = 16


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what every onnxruntime >= 1.17 loads
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_tiny(path: Path, seed: int = 0) -> Path:
    """Write the tiny model to `path`: input `x` [N,16] FP32 -> output `y` = relu(x @ W)."""
    weights = np.random.default_rng(seed).standard_normal((TINY_FEATURES, TINY_FEATURES))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Relu", ["xw"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TINY_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", TINY_FEATURES])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    return _save(graph, path)


def build_wide(path: Path) -> Path:
    """Squeezenet's input, [N,3,224,224] FP32 (602 KB at batch 1), and a 13 µs run: the mean
    of each channel, `y` [N,3]."""
    return _save(
        helper.make_graph(
            [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
            "wide",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        ),
        path,
    )


def build_long(path: Path, chain: int = 320, width: int = 512, seed: int = 0) -> Path:
    """A small input, [N,width] FP32, through `chain` MatMuls by one width x width matrix (1 MB
    of weights at 512): about 3 ms a run at chain 320 on one core here, squeezenet's length.
    The matrix is orthogonal, so values keep their size down the chain (no overflow, and no
    denormals, which would slow the run down)."""
    weights, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, width)))
    names = ["x", *(f"h{i}" for i in range(1, chain)), "y"]
    nodes = [helper.make_node("MatMul", [a, "w"], [b]) for a, b in itertools.pairwise(names)]
    return _save(
        helper.make_graph(
            nodes,
            "long",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
            initializer=[numpy_helper.from_array(weights.astype(np.float32), "w")],
        ),
        path,
    )


def squeezenet_model(functions_dir: Path = REPO_ROOT / "functions") -> Path:
    """The example squeezenet model file (`model.onnx` or Triton's `<version>/model.onnx`)."""
    folder = functions_dir / "squeezenet"
    candidates = [folder / "model.onnx", *sorted(folder.glob("[0-9]*/model.onnx"), reverse=True)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no squeezenet model under {folder}: build the example models first "
        "(`make models`, or `.venv/bin/python functions/build_models.py`)"
    )


@dataclass(frozen=True)
class BenchFunction:
    """One function directory the benchmark deploys, and how it is tuned."""

    name: str
    model: Path
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0
    vcpu: int = 1
    keep_alive_s: float = 600.0
    max_instances: int = 4

    def faasd_yaml(self) -> str:
        return (
            "# Written by the benchmark harness (benchmarks/faasd_bench/models.py).\n"
            "timeout_s: 30\n"
            f"batching: {{max_batch_size: {self.max_batch_size}, "
            f"max_queue_delay_ms: {self.max_queue_delay_ms:g}}}\n"
            f"resources: {{vcpu: {self.vcpu}}}\n"
            f"scale: {{min_instances: 0, max_instances: {self.max_instances}, "
            f"keep_alive_s: {self.keep_alive_s:g}}}\n"
        )

    def write(self, root: Path) -> Path:
        folder = root / self.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model, folder / "model.onnx")
        (folder / "faasd.yaml").write_text(self.faasd_yaml())
        return folder


def bench_functions(scratch: Path, *, vcpu: int, cold_keep_alive_s: float, tiny_batch: int,
                    tiny_delay_ms: float, squeezenet: Path | None = None) -> list[BenchFunction]:
    """The functions every daemon benchmark deploys (the tiny model is built here)."""
    tiny = build_tiny(scratch / "models" / "tiny.onnx")
    squeezenet = squeezenet or squeezenet_model()
    return [
        BenchFunction("squeezenet", squeezenet, vcpu=vcpu),
        # The example function's batching (functions/squeezenet/faasd.yaml): max 8, 2 ms.
        BenchFunction("squeezenet-b8", squeezenet, vcpu=vcpu, max_batch_size=8,
                      max_queue_delay_ms=2),
        BenchFunction("squeezenet-cold", squeezenet, vcpu=vcpu, keep_alive_s=cold_keep_alive_s),
        BenchFunction("tiny", tiny, max_batch_size=tiny_batch,
                      max_queue_delay_ms=tiny_delay_ms, vcpu=vcpu),
    ]
