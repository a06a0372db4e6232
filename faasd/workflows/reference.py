"""A workflow run in this process, stage after stage: the answer the daemon's runner must give.

`run_directly(workflow_dir, body_or_inputs)` loads every function's model and handler and runs
them in topological order with onnxruntime, following workflow.yaml as the contract says
(`workflows/README.md`):

- The one source function (no predecessors) takes the call: a body (bytes) goes through its
  handler's `preprocess`; tensors (input name -> array) go to its model as they are.
- Each edge feeds outputs to inputs as `faasd.workflows.wiring` resolves them (a `map` as
  written; else the single output to the single input; else outputs to inputs of the same
  name). A function with several predecessors (a join) runs once all of them have.
- Intermediate stages pass tensors: neither hook of their handlers runs.
- The sink's `postprocess` shapes the answer, one call (batch row) at a time, serialised and
  read back as the daemon's sandboxes and API do it (a JSON body, text, or bytes); a sink
  without `postprocess` answers `{"output": nested lists}`. With several sinks the answer is
  an object keyed by function name.

A function named in `functions` is the workflow directory's subdirectory of that name if there
is one, else `<functions_dir>/<name>` (by default `functions/` beside the workflow directory's
parent: the repository's layout, `workflows/<name>/` and `functions/`). Models load with one
intra-op thread, as a one-vCPU sandbox runs them.

This is a test oracle, not the runner: no sandboxes, no batching across calls, no shared
memory, no clock. It shares only the reading of workflow.yaml (`load_spec`) and the wiring
(`wire`) with the daemon, so a file the daemon refuses is refused here with the same
WorkflowSpecError; what it checks independently is the execution.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from faasd.runtime.onnx import OnnxModel
from faasd.sandbox.batching import Handler, conform, serialise
from faasd.sandbox.items import BodyResult
from faasd.v2 import encode_plain
from faasd.workflows.spec import FILE, WorkflowSpec, load_spec
from faasd.workflows.wiring import Signature, Wiring, wire

Tensors = dict[str, np.ndarray]
MODEL_FILE = "model.onnx"
HANDLER_FILE = "handler.py"
_VERSION_DIR = re.compile(r"^[1-9][0-9]*$")


class WorkflowError(ValueError):
    """A function of the workflow cannot be found or cannot take the call as given."""


def topological_order(spec: WorkflowSpec) -> list[str]:
    """The functions, each after all its predecessors (ties in `functions` order); the source
    first. `spec` is acyclic: load_spec checked it."""
    waiting = {name: set(spec.predecessors(name)) for name in spec.functions}
    order: list[str] = []
    while waiting:
        ready = [name for name in spec.functions if name in waiting and not waiting[name]]
        for name in ready:
            del waiting[name]
            for sources in waiting.values():
                sources.discard(name)
        order.extend(ready)
    return order


def find_model(directory: Path) -> Path:
    """`<dir>/model.onnx`, else the highest-numbered `<dir>/<N>/model.onnx` (Triton layout)."""
    if (directory / MODEL_FILE).is_file():
        return directory / MODEL_FILE
    versions = sorted((int(p.name), p / MODEL_FILE) for p in directory.iterdir()
                      if _VERSION_DIR.match(p.name) and (p / MODEL_FILE).is_file())
    if not versions:
        raise WorkflowError(f"no {MODEL_FILE} in {directory}; build it "
                            f"(python functions/build_models.py)")
    return versions[-1][1]


def load_handler(path: Path) -> Handler:
    """handler.py's hooks, imported under a name of its own (several handlers live here)."""
    spec = importlib.util.spec_from_file_location(f"faasd_reference_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise WorkflowError(f"{path} is not a Python module")
    module: ModuleType = importlib.util.module_from_spec(spec)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    sys.path.insert(0, str(path.parent))  # as in a sandbox: helper modules beside it import
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
        sys.dont_write_bytecode = before
    return Handler(preprocess=getattr(module, "preprocess", None),
                   postprocess=getattr(module, "postprocess", None))


@dataclass(frozen=True)
class Stage:
    name: str
    directory: Path
    model: OnnxModel
    handler: Handler

    @classmethod
    def load(cls, name: str, directory: Path) -> Stage:
        handler_path = directory / HANDLER_FILE
        handler = load_handler(handler_path) if handler_path.is_file() else Handler()
        return cls(name, directory, OnnxModel.load(find_model(directory)), handler)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.model.inputs]


@dataclass(frozen=True)
class WorkflowRun:
    """One run: `answers` one per batch row (what `POST /workflow/NAME` answers that call),
    `outputs` the sinks' output tensors by sink (the Open Inference Protocol path), `tensors`
    every stage's outputs by function."""

    answers: tuple[Any, ...]
    outputs: dict[str, Tensors]
    tensors: dict[str, Tensors]

    @property
    def answer(self) -> Any:
        """The answer of a one-call run (a body, or tensors with batch 1)."""
        if len(self.answers) != 1:
            raise ValueError(f"this run had {len(self.answers)} batch rows; read .answers")
        return self.answers[0]


def _decode(result: BodyResult) -> Any:
    if result.content_type == "application/json":
        return json.loads(result.body)
    if result.content_type.startswith("text/"):
        return result.body.decode()
    return result.body


def _answer(stage: Stage, outputs: Tensors, row: int) -> Any:
    one = {name: tensor[row : row + 1] for name, tensor in outputs.items()}
    if stage.handler.postprocess is None:
        return json.loads(encode_plain(one))
    result = serialise(stage.handler.postprocess(one))
    if not isinstance(result, BodyResult):
        raise WorkflowError(f"{stage.name}'s postprocess: {result.message}")
    return _decode(result)


@dataclass(frozen=True)
class LoadedWorkflow:
    """A workflow whose stages are loaded once and can be run many times."""

    spec: WorkflowSpec
    wiring: Wiring
    order: tuple[str, ...]
    stages: Mapping[str, Stage]

    def feeds(self, name: str, tensors: Mapping[str, Tensors]) -> Tensors:
        """Function `name`'s inputs, from its predecessors' outputs in `tensors`."""
        return {feed.input: tensors[feed.source][feed.output] for feed in self.wiring[name]}

    def run(self, body_or_inputs: bytes | Mapping[str, Any],
            content_type: str = "application/octet-stream") -> WorkflowRun:
        source = self.stages[self.order[0]]
        if isinstance(body_or_inputs, bytes | bytearray):
            if source.handler.preprocess is None:
                raise WorkflowError(f"{source.name} has no preprocess(); pass its inputs "
                                    f"({', '.join(source.input_names)}) as arrays")
            produced_inputs = source.handler.preprocess(bytes(body_or_inputs), content_type)
        else:
            produced_inputs = body_or_inputs
        feeds = conform(source.model, produced_inputs)
        tensors: dict[str, Tensors] = {source.name: source.model.run(feeds)}
        for name in self.order[1:]:
            tensors[name] = self.stages[name].model.run(self.feeds(name, tensors))
        sinks = self.spec.sinks()
        rows = next(iter(tensors[sinks[0]].values())).shape[0]
        per_sink = {sink: [_answer(self.stages[sink], tensors[sink], row) for row in range(rows)]
                    for sink in sinks}
        if len(sinks) == 1:
            answers = tuple(per_sink[sinks[0]])
        else:
            answers = tuple({sink: per_sink[sink][row] for sink in sinks} for row in range(rows))
        return WorkflowRun(answers, {sink: tensors[sink] for sink in sinks}, tensors)


def function_directory(name: str, workflow_dir: Path, functions_dir: Path) -> Path:
    for candidate in (workflow_dir / name, functions_dir / name):
        if candidate.is_dir():
            return candidate
    raise WorkflowError(f"{workflow_dir / FILE}: function {name!r} is neither "
                        f"{workflow_dir / name} nor {functions_dir / name}; add the directory "
                        f"or fix the name")


def load_workflow(workflow_dir: Path, functions_dir: Path | None = None) -> LoadedWorkflow:
    """Read workflow.yaml and load every stage (see the module's docstring for the rules).

    workflow.yaml is parsed and wired by the daemon's own `load_spec` and `wire`, so a file
    the daemon refuses is refused here with the same WorkflowSpecError.
    """
    workflow_dir = Path(workflow_dir)
    spec = load_spec(workflow_dir)
    shared = workflow_dir.parent.parent / "functions" if functions_dir is None else functions_dir
    order = topological_order(spec)
    stages = {name: Stage.load(name, function_directory(name, workflow_dir, shared))
              for name in order}
    signatures = {name: Signature(stage.model.inputs, stage.model.outputs)
                  for name, stage in stages.items()}
    wiring = wire(spec, signatures, file=str(workflow_dir / FILE))
    return LoadedWorkflow(spec, wiring, tuple(order), stages)


def run_directly(workflow_dir: Path, body_or_inputs: bytes | Mapping[str, Any], *,
                 content_type: str = "application/octet-stream",
                 functions_dir: Path | None = None) -> WorkflowRun:
    """Load the workflow in `workflow_dir` and run one call (a body, or the source's tensors)."""
    return load_workflow(workflow_dir, functions_dir).run(body_or_inputs, content_type)
