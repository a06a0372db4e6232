"""A workflow directory's `workflow.yaml`, parsed and checked on its own (no daemon needed).

```yaml
slo_ms: 150                 # end-to-end latency objective (required)
functions: [pre, net, post] # deployed function names, or subdirectories of this directory
edges:                      # predecessor -> successor
  - {from: pre, to: net}                  # outputs feed inputs (see faasd.workflows.wiring)
  - {from: net, to: post, map: {prob: x}} # output 'prob' of net becomes input 'x' of post
```

What is checked here is what the file alone can tell: the SLO, the function list, the edges'
ends, a cycle, exactly one source (the function with no predecessor, which takes the call's
body). Whether the tensors fit across each edge needs the deployed functions' signatures:
`faasd.workflows.wiring`. Every error names the file and the key, and says the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from esg.model import Workflow
from faasd.errors import DeployError, clip

FILE = "workflow.yaml"
MAX_FILE_BYTES = 256 * 1024
NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
KEYS = frozenset({"slo_ms", "functions", "edges", "description"})
EDGE_KEYS = frozenset({"from", "to", "map"})


class WorkflowSpecError(DeployError):
    """A workflow that cannot be deployed: `file` and `key` name the culprit."""

    def __init__(self, message: str, file: str = FILE, key: str | None = None) -> None:
        super().__init__(message, file=file)
        self.extra["key"] = key
        self.key = key


@dataclass(frozen=True)
class Edge:
    """`source`'s outputs feed `target`'s inputs; `map` renames output → input."""

    source: str
    target: str
    map: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WorkflowSpec:
    """A workflow as written: its DAG, its SLO, and which functions come with it.

    `local` maps the functions that are subdirectories of the workflow directory to them (they
    are deployed with the workflow); the others must already be deployed.
    """

    name: str
    slo_ms: float
    functions: tuple[str, ...]
    edges: tuple[Edge, ...]
    local: Mapping[str, Path]
    description: str = ""

    @property
    def source(self) -> str:
        targets = {e.target for e in self.edges}
        return next(f for f in self.functions if f not in targets)

    def sinks(self) -> tuple[str, ...]:
        sources = {e.source for e in self.edges}
        return tuple(f for f in self.functions if f not in sources)

    def predecessors(self, function: str) -> tuple[str, ...]:
        return tuple(e.source for e in self.edges if e.target == function)

    def uses(self, function: str) -> bool:
        return function in self.functions

    def to_esg(self) -> Workflow:
        """The scheduler's view: the same DAG, the SLO in seconds."""
        return Workflow(
            self.name,
            self.functions,
            tuple((e.source, e.target) for e in self.edges),
            self.slo_ms / 1000.0,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "slo_ms": self.slo_ms,
            "functions": list(self.functions),
            "edges": [
                {"from": e.source, "to": e.target, **({"map": dict(e.map)} if e.map else {})}
                for e in self.edges
            ],
            "description": self.description,
        }


def load_spec(directory: Path, name: str | None = None) -> WorkflowSpec:
    """The workflow in `directory` (named after it unless `name`); WorkflowSpecError if bad."""
    path = directory / FILE
    if not path.is_file():  # a FIFO or a device is no file: never opened
        raise WorkflowSpecError(
            f"{directory} has no {FILE}; a workflow directory needs one (slo_ms, functions, "
            "edges)", file=str(path))
    if path.stat().st_size > MAX_FILE_BYTES:
        raise WorkflowSpecError(
            f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB; a workflow.yaml lists "
            "functions and edges only", file=str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkflowSpecError(f"{path} is not valid YAML: {first}", file=str(path)) from None
    spec = parse_spec(doc, name or directory.name, file=str(path))
    local = {f: directory / f for f in spec.functions if (directory / f).is_dir()}
    return WorkflowSpec(spec.name, spec.slo_ms, spec.functions, spec.edges, local,
                        spec.description)


def parse_spec(doc: object, name: str, file: str = FILE) -> WorkflowSpec:
    """A WorkflowSpec from the parsed YAML/JSON document `doc` (no subdirectories)."""
    if not NAME.match(name):
        raise WorkflowSpecError(
            f"{name!r} is not a valid workflow name: use lowercase letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit; choose another --name",
            file=file, key="name")
    if not isinstance(doc, dict):
        raise WorkflowSpecError(
            f"{file} must be a mapping with slo_ms, functions and edges", file=file)
    unknown = sorted(set(map(str, doc)) - KEYS)
    if unknown:
        raise WorkflowSpecError(
            f"{file}: unknown key(s) {unknown}; a workflow has {sorted(KEYS)}",
            file=file, key=unknown[0])
    slo_ms = _slo(doc, file)
    functions = _functions(doc, file)
    edges = _edges(doc, functions, file)
    _check_dag(functions, edges, file)
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise WorkflowSpecError(f"{file}: description must be text", file=file,
                                key="description")
    return WorkflowSpec(name, slo_ms, functions, edges, {}, description)


def _slo(doc: Mapping[str, Any], file: str) -> float:
    if "slo_ms" not in doc:
        raise WorkflowSpecError(
            f"{file} has no slo_ms; add the end-to-end latency objective, e.g. 'slo_ms: 150'",
            file=file, key="slo_ms")
    value = doc["slo_ms"]
    try:  # a whole number past float's range overflows: as not finite
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:
        number = math.inf
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        shown = clip(repr(value))
        raise WorkflowSpecError(
            f"{file}: slo_ms must be a finite, positive number of milliseconds, got {shown}; "
            "e.g. 'slo_ms: 150'", file=file, key="slo_ms")
    return number


def _functions(doc: Mapping[str, Any], file: str) -> tuple[str, ...]:
    value = doc.get("functions")
    if not isinstance(value, list) or not value:
        raise WorkflowSpecError(
            f"{file}: functions must be a non-empty list of function names, e.g. "
            "'functions: [pre, net, post]'", file=file, key="functions")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not NAME.match(item):
            raise WorkflowSpecError(
                f"{file}: {item!r} in functions is not a function name", file=file,
                key="functions")
        if item in names:
            raise WorkflowSpecError(
                f"{file}: {item!r} is listed twice in functions; list each function once",
                file=file, key="functions")
        names.append(item)
    return tuple(names)


def _edges(doc: Mapping[str, Any], functions: tuple[str, ...], file: str) -> tuple[Edge, ...]:
    value = doc.get("edges", [])
    if value is None:
        value = []
    if not isinstance(value, list):
        raise WorkflowSpecError(
            f"{file}: edges must be a list like '- {{from: pre, to: net}}'", file=file,
            key="edges")
    edges: list[Edge] = []
    for index, item in enumerate(value):
        key = f"edges[{index}]"
        if not isinstance(item, dict) or not {"from", "to"} <= set(item):
            raise WorkflowSpecError(
                f"{file}: {key} must have 'from' and 'to', e.g. {{from: pre, to: net}}",
                file=file, key=key)
        extra = sorted(set(map(str, item)) - EDGE_KEYS)
        if extra:
            raise WorkflowSpecError(
                f"{file}: {key} has unknown key(s) {extra}; an edge has from, to and map",
                file=file, key=key)
        source, target = item["from"], item["to"]
        for end, what in ((source, "from"), (target, "to")):
            if end not in functions:
                raise WorkflowSpecError(
                    f"{file}: {key}.{what} names {end!r}, which is not in functions "
                    f"{list(functions)}; add it there or fix the name", file=file,
                    key=f"{key}.{what}")
        if source == target:
            raise WorkflowSpecError(f"{file}: {key} joins {source!r} to itself; remove it",
                                    file=file, key=key)
        if any(e.source == source and e.target == target for e in edges):
            raise WorkflowSpecError(
                f"{file}: {key} repeats the edge {source} -> {target}; merge their maps",
                file=file, key=key)
        edges.append(Edge(source, target, _map(item.get("map"), f"{key}.map", file)))
    return tuple(edges)


def _map(value: object, key: str, file: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise WorkflowSpecError(
            f"{file}: {key} must map output names to input names, e.g. {{prob: x}}",
            file=file, key=key)
    targets = list(value.values())
    if len(set(targets)) != len(targets):
        raise WorkflowSpecError(f"{file}: {key} feeds one input from two outputs", file=file,
                                key=key)
    return tuple(value.items())


def _check_dag(functions: tuple[str, ...], edges: tuple[Edge, ...], file: str) -> None:
    graph = nx.DiGraph()
    graph.add_nodes_from(functions)
    graph.add_edges_from((e.source, e.target) for e in edges)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = [u for u, _ in nx.find_cycle(graph)]
        path = " -> ".join([*cycle, cycle[0]])
        raise WorkflowSpecError(
            f"{file}: the edges form a cycle {path}; a workflow is a DAG, remove one of them",
            file=file, key="edges")
    sources = [f for f in functions if graph.in_degree(f) == 0]
    if len(sources) > 1:
        raise WorkflowSpecError(
            f"{file}: {sources} all have no predecessor, but exactly one function may take the "
            "call's body; add edges so that only one of them starts the workflow",
            file=file, key="edges")
