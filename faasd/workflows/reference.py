"""A workflow run in this process, stage after stage: the answer the daemon's runner must give.

`run_directly(workflow_dir, body_or_inputs)` loads every function's model and handler and runs
them in topological order with onnxruntime, following workflow.yaml exactly as the contract
says (issue 12; `workflows/README.md`):

- The one source function (no predecessors) takes the call: a body (bytes) goes through its
  handler's `preprocess`; tensors (input name -> array) go to its model as they are.
- An edge without `map` feeds the predecessor's single output to the successor's single input;
  `map: {out: in}` feeds output `out` to input `in` (and only those). A function with several
  predecessors (a join) runs once all of them have; each of its inputs must be fed exactly once.
- Intermediate stages pass tensors: neither hook of their handlers runs.
- The sink's `postprocess` shapes the answer, one call (batch row) at a time, serialised and
  read back as the daemon's sandboxes and API do it (a JSON body, text, or bytes); a sink
  without `postprocess` answers `{"output": nested lists}`. With several sinks the answer is
  an object keyed by function name.

A function named in `functions` is the workflow directory's subdirectory of that name if there
is one, else `<functions_dir>/<name>` (by default `functions/` beside the workflow directory's
parent: the repository's layout, `workflows/<name>/` and `functions/`). Models load with one
intra-op thread, as a one-vCPU sandbox runs them.

This is a test oracle, not the runner: no sandboxes, no batching across calls, no clock.
workflow.yaml is read minimally here (`slo_ms`, `functions`, `edges`); errors are
`WorkflowError`s that name the file and what to change, but the daemon's own spec parser is
the one that validates deploys.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml

from faasd.runtime.onnx import OnnxModel
from faasd.sandbox.batching import Handler, conform, serialise
from faasd.sandbox.items import BodyResult
from faasd.v2 import encode_plain

Tensors = dict[str, np.ndarray]
WORKFLOW_FILE = "workflow.yaml"
MODEL_FILE = "model.onnx"
HANDLER_FILE = "handler.py"
_VERSION_DIR = re.compile(r"^[1-9][0-9]*$")


class WorkflowError(ValueError):
    """workflow.yaml, or a function it names, does not make a runnable workflow."""


@dataclass(frozen=True)
class Edge:
    """`source` -> `target`; `mapping` holds (output, input) pairs, None for single -> single."""

    source: str
    target: str
    mapping: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class WorkflowDefinition:
    slo_ms: float
    functions: tuple[str, ...]
    edges: tuple[Edge, ...]


def _edge(raw: object, index: int, file: str) -> Edge:
    where = f"{file}: edges[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("from"), str) \
            or not isinstance(raw.get("to"), str):
        raise WorkflowError(f"{where} must be {{from: NAME, to: NAME}} (optionally with map), "
                            f"got {raw!r}")
    mapping = raw.get("map")
    if mapping is None:
        return Edge(raw["from"], raw["to"])
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise WorkflowError(f"{where}: map must name output: input pairs, e.g. "
                            f"{{prob: x}}, got {mapping!r}")
    return Edge(raw["from"], raw["to"], tuple(mapping.items()))


def parse_workflow(text: str, file: str = WORKFLOW_FILE) -> WorkflowDefinition:
    """workflow.yaml's text -> its definition; WorkflowError for a missing or ill-typed key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{file} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise WorkflowError(f"{file} must be a mapping with slo_ms, functions and edges")
    slo_ms = raw.get("slo_ms")
    if isinstance(slo_ms, bool) or not isinstance(slo_ms, int | float) or slo_ms <= 0:
        raise WorkflowError(f"{file}: slo_ms must be a positive number of milliseconds "
                            f"(e.g. slo_ms: 150), got {slo_ms!r}")
    functions = raw.get("functions")
    if not isinstance(functions, list) or not functions \
            or not all(isinstance(f, str) for f in functions):
        raise WorkflowError(f"{file}: functions must be a list of function names, "
                            f"e.g. [pre, net, post]")
    if len(set(functions)) != len(functions):
        raise WorkflowError(f"{file}: functions lists a name twice; list each once")
    edges = raw.get("edges") or []
    if not isinstance(edges, list):
        raise WorkflowError(f"{file}: edges must be a list of {{from: NAME, to: NAME}}")
    definition = WorkflowDefinition(float(slo_ms), tuple(functions),
                                    tuple(_edge(e, i, file) for i, e in enumerate(edges)))
    for edge in definition.edges:
        for name in (edge.source, edge.target):
            if name not in definition.functions:
                raise WorkflowError(f"{file}: edge {edge.source} -> {edge.target} names "
                                    f"{name!r}, which is not in functions; add it there")
    return definition


def topological_order(definition: WorkflowDefinition) -> list[str]:
    """The functions, each after all its predecessors (ties in `functions` order)."""
    waiting = {name: {e.source for e in definition.edges if e.target == name}
               for name in definition.functions}
    order: list[str] = []
    while waiting:
        ready = [name for name in definition.functions
                 if name in waiting and not waiting[name]]
        if not ready:
            raise WorkflowError(f"{WORKFLOW_FILE}: the edges make a cycle through "
                                f"{', '.join(sorted(waiting))}; remove one edge of it")
        for name in ready:
            del waiting[name]
            for sources in waiting.values():
                sources.discard(name)
        order.extend(ready)
    return order


def source_of(definition: WorkflowDefinition) -> str:
    """The one function without predecessors; WorkflowError if there are several."""
    sources = [f for f in definition.functions if all(e.target != f for e in definition.edges)]
    if len(sources) != 1:
        raise WorkflowError(f"{WORKFLOW_FILE}: a workflow takes the call in exactly one "
                            f"function, but {', '.join(sources) or 'none'} have no "
                            f"predecessor; add edges so that one source remains")
    return sources[0]


def sinks_of(definition: WorkflowDefinition) -> list[str]:
    return [f for f in definition.functions if all(e.source != f for e in definition.edges)]


def stage_feeds(definition: WorkflowDefinition, name: str, inputs: Sequence[str],
                produced: Mapping[str, Tensors]) -> Tensors:
    """Function `name`'s inputs (named `inputs`) from its predecessors' outputs (`produced`).

    Pure; WorkflowError for a map naming a tensor that does not exist, an edge without map
    between functions that do not have exactly one output and one input, or an input fed
    twice or not at all.
    """
    feeds: Tensors = {}
    for edge in (e for e in definition.edges if e.target == name):
        outputs = produced[edge.source]
        where = f"{WORKFLOW_FILE}: edge {edge.source} -> {name}"
        pairs = edge.mapping
        if pairs is None:
            if len(outputs) != 1 or len(inputs) != 1:
                raise WorkflowError(
                    f"{where} has no map, but {edge.source} has outputs {sorted(outputs)} and "
                    f"{name} inputs {list(inputs)}; add map: {{OUTPUT: INPUT}}")
            pairs = ((next(iter(outputs)), inputs[0]),)
        for output, input_name in pairs:
            if output not in outputs:
                raise WorkflowError(f"{where}: {edge.source} has no output {output!r} "
                                    f"(it has {sorted(outputs)}); fix the map")
            if input_name not in inputs:
                raise WorkflowError(f"{where}: {name} has no input {input_name!r} "
                                    f"(it has {list(inputs)}); fix the map")
            if input_name in feeds:
                raise WorkflowError(f"{where}: input {input_name!r} of {name} is fed twice; "
                                    f"map each input from one edge")
            feeds[input_name] = outputs[output]
    unfed = [i for i in inputs if i not in feeds]
    if unfed:
        raise WorkflowError(f"{WORKFLOW_FILE}: no edge feeds input {', '.join(unfed)} of "
                            f"{name}; add an edge (with a map) that does")
    return feeds


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

    definition: WorkflowDefinition
    order: tuple[str, ...]
    stages: Mapping[str, Stage]

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
            stage = self.stages[name]
            feeds = stage_feeds(self.definition, name, stage.input_names, tensors)
            tensors[name] = stage.model.run(feeds)
        sinks = sinks_of(self.definition)
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
    raise WorkflowError(f"{workflow_dir / WORKFLOW_FILE}: function {name!r} is neither "
                        f"{workflow_dir / name} nor {functions_dir / name}; add the directory "
                        f"or fix the name")


def load_workflow(workflow_dir: Path, functions_dir: Path | None = None) -> LoadedWorkflow:
    """Read workflow.yaml and load every stage (see the module's docstring for the rules)."""
    workflow_dir = Path(workflow_dir)
    path = workflow_dir / WORKFLOW_FILE
    definition = parse_workflow(path.read_text(encoding="utf-8"), str(path))
    source_of(definition)
    order = topological_order(definition)
    shared = workflow_dir.parent.parent / "functions" if functions_dir is None else functions_dir
    stages = {name: Stage.load(name, function_directory(name, workflow_dir, shared))
              for name in order}
    return LoadedWorkflow(definition, tuple(order), stages)


def run_directly(workflow_dir: Path, body_or_inputs: bytes | Mapping[str, Any], *,
                 content_type: str = "application/octet-stream",
                 functions_dir: Path | None = None) -> WorkflowRun:
    """Load the workflow in `workflow_dir` and run one call (a body, or the source's tensors)."""
    return load_workflow(workflow_dir, functions_dir).run(body_or_inputs, content_type)
