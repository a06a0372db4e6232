#!/usr/bin/env python3
"""Build the example functions' models (and the samples they lack) under functions/.

    python functions/build_models.py            # build what is missing or out of date
    python functions/build_models.py --force    # rebuild everything
    python functions/build_models.py --out DIR  # write DIR/<function>/model.onnx instead

- digits: a small MLP (64 -> 64 ReLU -> 10 softmax) trained with scikit-learn on its own
  handwritten digits (`load_digits`), exported by writing the ONNX graph by hand
  (MatMul/Add/Relu/Softmax), checked on a held-out quarter of the data.
- squeezenet, resnet50: the real architectures that ship inside the onnx package
  (`onnx/backend/test/data/light/`), whose weights are constants (untrained), rewritten so
  the batch dimension is dynamic and checked with onnxruntime: a batch of 4 equals 4 runs of 1.

- imagepre, label (functions/) and the stages that live inside the example workflows
  (workflows/ensemble/vote, workflows/cutout/segment, workflows/cutout/composite): graphs
  written with onnx.helper in workflow_graphs.py (crop and normalise, TopK, mean of two
  classifiers, a small conv net with hand-set weights, mask compositing), checked the same
  way. Each workflow directory also gets its sample.jpg.

    python functions/build_models.py ensemble   # a workflow's stages (and its sample.jpg)
    python functions/build_models.py --workflows-out DIR   # DIR/<workflow>/<stage>/model.onnx

A model is up to date when its `faasd.recipe` metadata matches a hash of this script, the
inputs it is built from, and (for digits) the handler its training data goes through. Needs
only numpy, onnxruntime, pillow, onnx and scikit-learn (`pip install -e '.[models]'`).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # the daemon itself does not need onnx; only building the examples does
    sys.exit("functions/build_models.py needs the models extra: pip install -e '.[models]'")

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE.parent / "workflows"
GRAPHS_FILE = HERE / "workflow_graphs.py"
LIGHT_MODELS = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"
RECIPE_KEY = "faasd.recipe"
#: onnxruntime reads models up to a given IR version; 8 (onnx 1.10+) is read by every 1.17+.
IR_VERSION = 8
DIGITS_OPSET = 13
DIGITS_HIDDEN = 64
DIGITS_SEED = 0
DIGITS_EPOCHS = 60
DIGITS_TEST_FRACTION = 0.25
DIGITS_SAMPLE_LABEL = 3
ACCURACY_FLOOR = 0.95
VERIFY_BATCH = 4
#: Builds one function: (its directory, where model.onnx goes, rebuild even if up to date).
Builder = Callable[[Path, Path, bool], None]


# --------------------------------------------------------------------------- progress


@contextmanager
def step(what: str) -> Iterator[None]:
    """Print `what`, then how long it took (so a step over a second never looks stuck)."""
    print(f"  {what} ...", end="", flush=True)
    started = time.perf_counter()
    yield
    print(f" {time.perf_counter() - started:.1f} s", flush=True)


def recipe(*parts: bytes) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def is_up_to_date(path: Path, stamp: str) -> bool:
    if not path.is_file():
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a corrupt or truncated model is simply rebuilt
        return False
    return any(p.key == RECIPE_KEY and p.value == stamp for p in model.metadata_props)


def save(model: onnx.ModelProto, path: Path, stamp: str) -> None:
    helper.set_model_props(model, {RECIPE_KEY: stamp})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(temporary))
    temporary.replace(path)


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def load_module(path: Path, name: str) -> ModuleType:
    """Import a function's handler.py by path (the functions are directories, not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ in functions/: the daemon would copy it with every deploy.
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module


# --------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class DigitsData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def digits_data() -> DigitsData:
    """`load_digits` split 75/25, stratified, seeded: the held-out quarter is never trained on."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, bunch.target, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED,
        stratify=bunch.target,
    )
    return DigitsData(train_x, train_y, test_x, test_y)


def digit_picture(pixels: np.ndarray, scale: int = 16, border: int = 16) -> Image.Image:
    """A dataset sample drawn as a picture: dark ink on white paper, upscaled, with a margin."""
    gray = (255.0 - pixels.reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    digit = Image.fromarray(gray).resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    picture = Image.new("L", (8 * scale + 2 * border, 8 * scale + 2 * border), 255)
    picture.paste(digit, (border, border))
    return picture


def train_digits(data: DigitsData, handler: ModuleType) -> Any:
    """An MLP on the training pictures, as given and as the handler sees them when drawn.

    Inputs are scaled to 0..1 for training; the exported graph folds the 1/16 into W1.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    seen = np.stack([handler.to_dataset_pixels(digit_picture(x)) for x in data.train_x])
    x = np.concatenate([data.train_x, seen]) / 16.0
    y = np.concatenate([data.train_y, data.train_y])
    classifier = MLPClassifier(hidden_layer_sizes=(DIGITS_HIDDEN,), batch_size=64,
                               max_iter=DIGITS_EPOCHS, random_state=DIGITS_SEED)
    with warnings.catch_warnings():
        # A fixed number of epochs on purpose (well under a second); the held-out accuracy,
        # not the optimizer's tolerance, says whether the model is good enough.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x, y)
    return classifier


def digits_graph(classifier: Any) -> onnx.ModelProto:
    """probabilities = softmax(relu(input @ W1/16 + b1) @ W2 + b2); input [N, 64] in 0..16."""
    w1, w2 = (np.asarray(w, dtype=np.float32) for w in classifier.coefs_)
    b1, b2 = (np.asarray(b, dtype=np.float32) for b in classifier.intercepts_)
    initializers = [
        numpy_helper.from_array(w1 / np.float32(16.0), "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["hidden_mm"]),
        helper.make_node("Add", ["hidden_mm", "b1"], ["hidden_pre"]),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DIGITS_OPSET)],
                              producer_name="faasd build_models.py")
    model.ir_version = IR_VERSION
    model.doc_string = ("Handwritten digit classifier (MLP) trained on scikit-learn's "
                        "load_digits; input: 8x8 pixel intensities 0..16, row-major.")
    return model


def accuracy(model: onnx.ModelProto | Path, x: np.ndarray, y: np.ndarray) -> float:
    probabilities = session(model).run(None, {"input": x.astype(np.float32)})[0]
    return float((probabilities.argmax(axis=1) == y).mean())


def pick_digits_sample(model: onnx.ModelProto, data: DigitsData, handler: ModuleType) -> int:
    """The first held-out DIGITS_SAMPLE_LABEL that the model gets right, raw and as a picture."""
    run = session(model)
    for index in np.flatnonzero(data.test_y == DIGITS_SAMPLE_LABEL):
        drawn = handler.to_dataset_pixels(digit_picture(data.test_x[index]))
        batch = np.stack([data.test_x[index], drawn]).astype(np.float32)
        if (run.run(None, {"input": batch})[0].argmax(axis=1) == DIGITS_SAMPLE_LABEL).all():
            return int(index)
    raise RuntimeError(f"no held-out {DIGITS_SAMPLE_LABEL} is classified right")


def build_digits(directory: Path, out: Path, force: bool) -> None:
    handler_path = directory / "handler.py"
    stamp = recipe(handler_path.read_bytes())
    target = out / "model.onnx"
    samples = [directory / "sample.png", directory / "sample.json"]
    if not force and is_up_to_date(target, stamp) and all(p.exists() for p in samples):
        print("  up to date")
        return
    handler = load_module(handler_path, "digits_handler")
    with step("loading scikit-learn's digits"):
        data = digits_data()
    with step(f"training an MLP on {len(data.train_x)} pictures (x2 as drawn)"):
        classifier = train_digits(data, handler)
    model = digits_graph(classifier)
    with step("checking the ONNX graph against scikit-learn"):
        expected = classifier.predict_proba(data.test_x / 16.0)
        got = session(model).run(None, {"input": data.test_x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    held_out = accuracy(model, data.test_x, data.test_y)
    print(f"  held-out accuracy {held_out:.4f} on {len(data.test_x)} digits never trained on")
    if held_out < ACCURACY_FLOOR:
        raise RuntimeError(f"digits accuracy {held_out:.4f} is below {ACCURACY_FLOOR}")
    save(model, target, stamp)
    if force or not all(p.exists() for p in samples):
        index = pick_digits_sample(model, data, handler)
        digit_picture(data.test_x[index]).save(directory / "sample.png", optimize=True)
        request = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                               "data": [float(v) for v in data.test_x[index]]}]}
        (directory / "sample.json").write_text(json.dumps(request, separators=(",", ":")) + "\n",
                                         encoding="utf-8")
        print(f"  sample: held-out digit #{index}, a {DIGITS_SAMPLE_LABEL}")


# --------------------------------------------------------------------------- ImageNet models


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def _constant_shapes(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            found[node.output[0]] = node.attribute[0].t
    return found


def make_batch_dynamic(model: onnx.ModelProto, batch_dim: str = "N") -> onnx.ModelProto:
    """A copy of `model` whose graph inputs and outputs take any batch size.

    Dimension 0 of every real input and output becomes `batch_dim`; a Reshape whose target
    shape is a constant starting with 1 gets 0 there ("copy the input's batch size");
    initializers stop being graph inputs (IR 3 listed them there, which lets a caller override
    them and keeps onnxruntime from folding them); unused initializers are dropped.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    real_inputs = [v for v in graph.input if v.name not in weights]
    del graph.input[:]
    graph.input.extend(real_inputs)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = batch_dim
    del graph.value_info[:]  # shapes inferred for batch 1 no longer hold
    constants = _constant_shapes(graph)
    for node in graph.node:
        if node.op_type == "Flatten" and any(a.name == "axis" and a.i == 0 for a in node.attribute):
            raise ValueError(f"Flatten {node.name} with axis 0 folds the batch; not supported")
        if node.op_type == "Reshape" and node.input[1] in constants:
            shape = numpy_helper.to_array(constants[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                constants[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    model.ir_version = max(model.ir_version, 4)
    return model


def random_feeds(run: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every input of `run`, `batch` rows each: uint8 pixels 0..255, else
    standard normal float32."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for feed in run.get_inputs():
        shape = [batch] + [int(d) for d in feed.shape[1:]]
        if feed.type == "tensor(uint8)":
            feeds[feed.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feeds[feed.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def check_batch_dynamic(model: onnx.ModelProto, batch: int = VERIFY_BATCH, seed: int = 0) -> None:
    """AssertionError unless running `batch` inputs at once equals running each alone."""
    run = session(model)
    feeds = random_feeds(run, batch, seed)
    together = run.run(None, feeds)
    alone = [run.run(None, {name: x[i : i + 1] for name, x in feeds.items()})
             for i in range(batch)]
    for index, output in enumerate(together):
        assert output.shape[0] == batch, f"output {index} has batch {output.shape[0]}"
        expected = np.concatenate([outputs[index] for outputs in alone])
        np.testing.assert_allclose(output.astype(np.float64), expected.astype(np.float64),
                                   rtol=1e-4, atol=1e-6)


def sample_picture() -> Image.Image:
    """A small made-up landscape (sky, sun, hills): something to classify, drawn here."""
    width, height = 160, 120
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (np.array([70, 130, 210]) * (1 - rows) + np.array([200, 225, 250]) * rows)
    picture = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((105, 15, 135, 45), fill=(250, 210, 60))
    draw.polygon([(0, 120), (0, 80), (50, 60), (100, 85), (160, 65), (160, 120)],
                 fill=(60, 130, 60))
    return picture


def write_tensor_sample(directory: Path, handler: ModuleType, input_name: str) -> None:
    """sample.json: sample.jpg as a V2 inference request (about 1 MB of JSON numbers)."""
    tensor = handler.to_tensor(Image.open(directory / "sample.jpg").convert("RGB"))[np.newaxis]
    request = {"inputs": [{"name": input_name, "shape": list(tensor.shape), "datatype": "FP32",
                           "data": np.round(tensor.astype(np.float64), 4).ravel().tolist()}]}
    (directory / "sample.json").write_text(json.dumps(request, separators=(",", ":")) + "\n",
                                         encoding="utf-8")


def imagenet_builder(source_name: str, rename: dict[str, str]) -> Builder:
    def build(directory: Path, out: Path, force: bool) -> None:
        source = LIGHT_MODELS / source_name
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing; install onnx (pip install onnx)")
        stamp = recipe(source.read_bytes(), json.dumps(rename).encode())
        target = out / "model.onnx"
        samples = [directory / "sample.jpg", directory / "sample.json"]
        if not force and is_up_to_date(target, stamp) and all(p.exists() for p in samples):
            print("  up to date")
            return
        with step(f"rewriting {source_name} for a dynamic batch"):
            model = make_batch_dynamic(onnx.load(str(source)))
            for old, new in rename.items():
                rename_tensor(model.graph, old, new)
            model.doc_string = (f"{source_name} from the onnx package's backend test data: the "
                                "real architecture with constant (untrained) weights.")
        with step(f"checking batch {VERIFY_BATCH} = {VERIFY_BATCH} x batch 1 in onnxruntime"):
            check_batch_dynamic(model)
        save(model, target, stamp)
        if force or not (directory / "sample.jpg").exists():
            sample_picture().save(directory / "sample.jpg", quality=85)
        if force or not (directory / "sample.json").exists():
            handler = load_module(directory / "handler.py", f"{directory.name}_handler")
            write_tensor_sample(directory, handler, rename.get("data_0", "data_0"))

    return build


# --------------------------------------------------------------------------- workflow stages

#: Writes one sample file's bytes, given the graphs module (samples run the graphs they feed).
SampleMaker = Callable[[ModuleType], bytes]


def v2_request(tensors: dict[str, np.ndarray], decimals: int = 4) -> bytes:
    """A V2 inference request (JSON) carrying `tensors`, floats rounded to `decimals`."""
    inputs = []
    for name, tensor in tensors.items():
        data = tensor.ravel()
        if data.dtype.kind == "f":
            data = np.round(data.astype(np.float64), decimals)
        datatype = {"f": "FP32", "u": "UINT8", "i": "INT64"}[tensor.dtype.kind]
        inputs.append({"name": name, "shape": list(tensor.shape), "datatype": datatype,
                       "data": data.tolist()})
    return (json.dumps({"inputs": inputs}, separators=(",", ":")) + "\n").encode()


def jpeg_sample(_graphs: ModuleType) -> bytes:
    stream = io.BytesIO()
    sample_picture().save(stream, "JPEG", quality=85)
    return stream.getvalue()


def made_up_probabilities(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """A classifier's answer to stand in for a real one: softmax of seeded normal logits x 3."""
    logits = np.random.default_rng(seed).standard_normal(1000) * 3.0
    probabilities = np.exp(logits - logits.max())
    return (probabilities / probabilities.sum()).astype(np.float32).reshape(shape)


def picture_tensor(graphs: ModuleType) -> np.ndarray:
    """The sample picture as imagepre makes it: data_0 FP32 [1, 3, 224, 224]."""
    handler = load_module(HERE / "imagepre" / "handler.py", "imagepre_handler")
    pixels = handler.to_pixels(sample_picture())[np.newaxis]
    result: np.ndarray = session(graphs.imagepre_graph()).run(None, {"image": pixels})[0]
    return result


def picture_mask(graphs: ModuleType, picture: np.ndarray) -> np.ndarray:
    result: np.ndarray = session(graphs.segment_graph()).run(None, {"data_0": picture})[0]
    return result


def label_sample(_graphs: ModuleType) -> bytes:
    return v2_request({"probabilities": made_up_probabilities(7, (1, 1000, 1, 1))}, 6)


def vote_sample(_graphs: ModuleType) -> bytes:
    return v2_request({"squeezenet": made_up_probabilities(7, (1, 1000, 1, 1)),
                       "resnet50": made_up_probabilities(8, (1, 1000))}, 6)


def segment_sample(graphs: ModuleType) -> bytes:
    return v2_request({"data_0": picture_tensor(graphs)})


def composite_sample(graphs: ModuleType) -> bytes:
    picture = picture_tensor(graphs)
    return v2_request({"image": picture, "mask": picture_mask(graphs, picture)})


def graph_builder(graph: str, samples: dict[str, SampleMaker]) -> Builder:
    """A builder for a graph of workflow_graphs.py and the sample files its directory lacks."""

    def build(directory: Path, out: Path, force: bool) -> None:
        graphs = load_module(GRAPHS_FILE, "workflow_graphs")
        stamp = recipe(GRAPHS_FILE.read_bytes(), graph.encode())
        target = out / "model.onnx"
        missing = [name for name in samples if force or not (directory / name).exists()]
        if not force and is_up_to_date(target, stamp) and not missing:
            print("  up to date")
            return
        model = graphs.GRAPHS[graph]()
        with step(f"checking batch {VERIFY_BATCH} = {VERIFY_BATCH} x batch 1 in onnxruntime"):
            check_batch_dynamic(model)
        save(model, target, stamp)
        for name in missing:
            (directory / name).write_bytes(samples[name](graphs))
            print(f"  wrote {name}")

    return build


BUILDERS: dict[str, Builder] = {
    "digits": build_digits,
    "squeezenet": imagenet_builder("light_squeezenet.onnx", {}),
    "resnet50": imagenet_builder(
        "light_resnet50.onnx", {"gpu_0/data_0": "data_0", "gpu_0/softmax_1": "softmax_1"}
    ),
    "imagepre": graph_builder("imagepre", {"sample.jpg": jpeg_sample}),
    "label": graph_builder("label", {"sample.json": label_sample}),
}
#: The example workflows (workflows/<name>/) and the stages deployed with them, which live in
#: their subdirectories; the other stages name functions of functions/.
WORKFLOW_STAGES: dict[str, dict[str, Builder]] = {
    "classify": {},
    "ensemble": {"vote": graph_builder("vote", {"sample.json": vote_sample})},
    "cutout": {
        "segment": graph_builder("segment", {"sample.json": segment_sample}),
        "composite": graph_builder("composite", {"sample.json": composite_sample}),
    },
}


def build_workflow(name: str, out: Path, force: bool) -> None:
    """workflows/<name>/sample.jpg if missing, and <out>/<stage>/model.onnx for each stage."""
    directory = WORKFLOWS / name
    sample = directory / "sample.jpg"
    if force or not sample.exists():
        sample.write_bytes(jpeg_sample(load_module(GRAPHS_FILE, "workflow_graphs")))
        print(f"{name}: wrote sample.jpg")
    for stage, builder in WORKFLOW_STAGES[name].items():
        print(f"{name}/{stage}:", flush=True)
        builder(directory / stage, out / stage, force)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="write <out>/<function>/model.onnx (default: functions/)")
    parser.add_argument("--workflows-out", type=Path, default=WORKFLOWS,
                        help="write <dir>/<workflow>/<stage>/model.onnx (default: workflows/)")
    every = [*BUILDERS, *WORKFLOW_STAGES]
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"functions and workflows to build (default: all of "
                             f"{', '.join(every)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(every))
    if unknown:
        parser.error(f"unknown function or workflow {', '.join(unknown)}; "
                     f"choose from {', '.join(every)}")
    started = time.perf_counter()
    for name in args.names or every:
        if name in WORKFLOW_STAGES:
            build_workflow(name, args.workflows_out.resolve() / name, args.force)
            continue
        print(f"{name}:", flush=True)
        BUILDERS[name](HERE / name, args.out.resolve() / name, args.force)
    print(f"models built in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
