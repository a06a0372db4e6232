"""Planning and split instances as JSON values: parsing with errors that name the field.

Plan instance (`python -m esg plan`):

    {"functions": [{"name": "f", "configs": [{"batch": 1, "vcpu": 2, "vgpu": 0,
                                               "latency_ms": 12.5, "cost": 3e-7}]}],
     "edges": [["f", "g"]], "budget_ms": 100, "k": 8}

Split instance (`python -m esg split`):

    {"functions": [{"name": "f", "min_latency_ms": 12.5}], "edges": [["f", "g"]],
     "slo_ms": 300, "group_size": 3}

`edges` defaults to none, `k` to 8, `group_size` to 3. Every error is an `InstanceError` whose
`field` is the path of the culprit, e.g. `functions[1].configs[0].latency_ms`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from esg.errors import InstanceError, WorkflowError
from esg.model import GPU_UNITS, Config, Workflow
from esg.search import Option


@dataclass(frozen=True)
class PlanInstance:
    functions: tuple[str, ...]
    options: Mapping[str, tuple[Option, ...]]
    edges: tuple[tuple[str, str], ...]
    budget_ms: float
    k: int


@dataclass(frozen=True)
class SplitInstance:
    workflow: Workflow
    min_latency_ms: Mapping[str, float]
    slo_ms: float
    group_size: int


def parse_plan_instance(data: Any, where: str = "") -> PlanInstance:
    obj = _object(data, where.rstrip(".") or "instance", {"functions", "edges", "budget_ms", "k"})
    functions = _list(obj, "functions", where, nonempty=True)
    names: list[str] = []
    options: dict[str, tuple[Option, ...]] = {}
    for i, item in enumerate(functions):
        path = f"{where}functions[{i}]"
        fn = _object(item, path, {"name", "configs"})
        name = _name(fn, path, names)
        configs = _list(fn, "configs", f"{path}.", nonempty=True)
        seen: set[Config] = set()
        parsed = []
        for j, raw in enumerate(configs):
            option = _option(raw, f"{path}.configs[{j}]")
            if option.config in seen:
                raise InstanceError(f"{path}.configs[{j}]", f"{option.config} is listed twice")
            seen.add(option.config)
            parsed.append(option)
        names.append(name)
        options[name] = tuple(parsed)
    edges = _edges(obj, where, names)
    budget = _number(obj, "budget_ms", where, required=True)
    k = _integer(obj, "k", where, default=8, minimum=1)
    return PlanInstance(tuple(names), options, edges, budget, k)


def parse_split_instance(data: Any, where: str = "") -> SplitInstance:
    obj = _object(
        data, where.rstrip(".") or "instance", {"functions", "edges", "slo_ms", "group_size"}
    )
    functions = _list(obj, "functions", where, nonempty=True)
    names: list[str] = []
    latency: dict[str, float] = {}
    for i, item in enumerate(functions):
        path = f"{where}functions[{i}]"
        fn = _object(item, path, {"name", "min_latency_ms"})
        name = _name(fn, path, names)
        latency[name] = _number(fn, "min_latency_ms", f"{path}.", required=True, minimum=0.0)
        names.append(name)
    edges = _edges(obj, where, names)
    slo = _number(obj, "slo_ms", where, required=True)
    if not slo > 0:
        raise InstanceError(f"{where}slo_ms", f"must be > 0, got {slo}")
    group_size = _integer(obj, "group_size", where, default=3, minimum=1)
    workflow = Workflow(name="instance", functions=tuple(names), edges=edges, slo_s=slo / 1000.0)
    return SplitInstance(workflow, latency, slo, group_size)


# ---------------------------------------------------------------- field parsers


def _object(value: Any, path: str, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InstanceError(path, f"must be a JSON object, got {_kind(value)}")
    for key in value:
        if key not in known:
            raise InstanceError(f"{path}.{key}", f"unknown field; expected one of {sorted(known)}")
    return value


def _list(obj: Mapping[str, Any], key: str, prefix: str, *, nonempty: bool) -> Sequence[Any]:
    path = f"{prefix}{key}"
    if key not in obj:
        raise InstanceError(path, "is required")
    value = obj[key]
    if not isinstance(value, list):
        raise InstanceError(path, f"must be a list, got {_kind(value)}")
    if nonempty and not value:
        raise InstanceError(path, "must not be empty")
    return value


def _name(fn: Mapping[str, Any], path: str, taken: Sequence[str]) -> str:
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise InstanceError(f"{path}.name", f"must be a non-empty string, got {name!r}")
    if name in taken:
        raise InstanceError(f"{path}.name", f"{name!r} is used twice")
    return name


def _option(raw: Any, path: str) -> Option:
    obj = _object(raw, path, {"batch", "vcpu", "vgpu", "latency_ms", "cost"})
    batch = _integer(obj, "batch", f"{path}.", minimum=1)
    vcpu = _integer(obj, "vcpu", f"{path}.", minimum=1)
    vgpu = _integer(obj, "vgpu", f"{path}.", default=0, minimum=0)
    if vgpu > GPU_UNITS:
        raise InstanceError(f"{path}.vgpu", f"must be at most {GPU_UNITS}, got {vgpu}")
    latency = _number(obj, "latency_ms", f"{path}.", required=True, minimum=0.0)
    cost = _number(obj, "cost", f"{path}.", required=True, minimum=0.0)
    return Option(Config(batch, vcpu, vgpu), latency, cost)


def _integer(
    obj: Mapping[str, Any], key: str, prefix: str, *, default: int | None = None, minimum: int
) -> int:
    path = f"{prefix}{key}"
    if key not in obj:
        if default is None:
            raise InstanceError(path, "is required")
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InstanceError(path, f"must be an integer, got {value!r}")
    if value < minimum:
        raise InstanceError(path, f"must be >= {minimum}, got {value}")
    return value


def _number(
    obj: Mapping[str, Any],
    key: str,
    prefix: str,
    *,
    required: bool,
    minimum: float | None = None,
) -> float:
    path = f"{prefix}{key}"
    if key not in obj:
        if required:
            raise InstanceError(path, "is required")
        return math.inf
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InstanceError(path, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InstanceError(path, f"must be finite, got {value!r}")
    if minimum is not None and number < minimum:
        raise InstanceError(path, f"must be >= {minimum:g}, got {value!r}")
    return number


def _edges(
    obj: Mapping[str, Any], prefix: str, names: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    if "edges" not in obj:
        return ()
    raw = _list(obj, "edges", prefix, nonempty=False)
    known = set(names)
    edges = []
    for i, edge in enumerate(raw):
        path = f"{prefix}edges[{i}]"
        if (
            not isinstance(edge, list)
            or len(edge) != 2
            or not all(isinstance(end, str) for end in edge)
        ):
            raise InstanceError(path, f"must be a pair of function names, got {edge!r}")
        for end in edge:
            if end not in known:
                raise InstanceError(path, f"names unknown function {end!r}")
        edges.append((edge[0], edge[1]))
    graph = nx.DiGraph(edges)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = " -> ".join(u for u, _ in nx.find_cycle(graph))
        raise InstanceError(f"{prefix}edges", f"form a cycle through {cycle}")
    try:
        Workflow(name="instance", functions=tuple(names), edges=tuple(edges))
    except WorkflowError as exc:  # pragma: no cover - the checks above catch these first
        raise InstanceError(f"{prefix}edges", exc.detail) from exc
    return tuple(edges)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
