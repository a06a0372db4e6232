"""A workflow as a JSON file, for `python -m esg.sim run --workflow FILE`.

    {"name": "my-app", "slo_ms": 120,
     "functions": [{"name": "resize",
                    "configs": [{"batch": 1, "vcpu": 2, "vgpu": 0, "latency_ms": 4.5}, ...]},
                   ...],
     "edges": [["resize", "detect"], ...]}

Each function lists the configurations it may run at and their mean latency (ms) for one
batch; cost comes from the pricing (`configs/pricing.yaml`). `vgpu` is a MIG slice size
(0 = CPU only, else 1, 2, 3, 4 or 7 of a GPU's 7 units). `edges` defaults to none. Every error
is an `InstanceError` whose `field` is the path of the culprit, e.g.
`functions[2].configs[0].vgpu`. `workflow_json` writes the same format back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from esg.errors import InstanceError, WorkflowError
from esg.instance import _edges, _integer, _list, _name, _number, _object
from esg.model import MIG_SIZES, Config, Profile, Workflow


@dataclass(frozen=True)
class WorkflowFile:
    """A parsed workflow file: the DAG (SLO in seconds) and a latency table per function."""

    workflow: Workflow
    tables: Mapping[str, Mapping[Config, float]]

    @property
    def slo_ms(self) -> float:
        return self.workflow.slo_s * 1000.0

    def profiles(self) -> dict[str, Profile]:
        return {f: Profile(f, dict(t)) for f, t in self.tables.items()}

    def min_latency_ms(self) -> dict[str, float]:
        return {f: min(t.values()) for f, t in self.tables.items()}

    def critical_path(self, hop_ms: float = 0.0) -> tuple[float, int]:
        """The longest path over every function's fastest configuration, with `hop_ms` per
        edge on it, and the number of edges on that path."""
        fastest = self.min_latency_ms()
        best: dict[str, tuple[Fraction, int]] = {}
        for f in self.workflow.topological_order():
            before = [
                (best[p][0] + Fraction(hop_ms), best[p][1] + 1)
                for p in self.workflow.predecessors(f)
            ]
            start, hops = max(before, default=(Fraction(0), 0))
            best[f] = (start + Fraction(fastest[f]), hops)
        length, hops = max(best.values())
        return float(length), hops


def parse_workflow_file(data: Any) -> WorkflowFile:
    """Parse and validate a workflow file's JSON value (see the module docstring)."""
    obj = _object(data, "workflow", {"name", "slo_ms", "functions", "edges"})
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise InstanceError("name", f"must be a non-empty string, got {name!r}")
    slo_ms = _number(obj, "slo_ms", "", required=True)
    if not slo_ms > 0:
        raise InstanceError("slo_ms", f"must be > 0, got {obj['slo_ms']!r}")
    names: list[str] = []
    tables: dict[str, dict[Config, float]] = {}
    for i, item in enumerate(_list(obj, "functions", "", nonempty=True)):
        path = f"functions[{i}]"
        fn = _object(item, path, {"name", "configs"})
        function = _name(fn, path, names)
        table: dict[Config, float] = {}
        for j, raw in enumerate(_list(fn, "configs", f"{path}.", nonempty=True)):
            where = f"{path}.configs[{j}]"
            config, latency = _config(raw, where)
            if config in table:
                raise InstanceError(where, f"{config} is listed twice")
            table[config] = latency
        names.append(function)
        tables[function] = table
    edges = _edges(obj, "", names)
    try:
        workflow = Workflow(name, tuple(names), edges, slo_ms / 1000.0)
    except WorkflowError as exc:  # pragma: no cover - the checks above catch these first
        raise InstanceError("workflow", exc.detail) from exc
    return WorkflowFile(workflow, tables)


def _config(raw: Any, path: str) -> tuple[Config, float]:
    obj = _object(raw, path, {"batch", "vcpu", "vgpu", "latency_ms"})
    batch = _integer(obj, "batch", f"{path}.", minimum=1)
    vcpu = _integer(obj, "vcpu", f"{path}.", minimum=1)
    vgpu = _integer(obj, "vgpu", f"{path}.", default=0, minimum=0)
    if vgpu not in (0, *MIG_SIZES):
        sizes = ", ".join(map(str, MIG_SIZES))
        raise InstanceError(f"{path}.vgpu", f"must be 0 (CPU only) or a MIG size ({sizes}), "
                                            f"got {vgpu}")
    latency = _number(obj, "latency_ms", f"{path}.", required=True)
    if not latency > 0:
        raise InstanceError(f"{path}.latency_ms", f"must be > 0, got {obj['latency_ms']!r}")
    return Config(batch, vcpu, vgpu), latency


def workflow_json(
    workflow: Workflow, tables: Mapping[str, Mapping[Config, float]], slo_ms: float
) -> dict[str, Any]:
    """The workflow-file JSON value of a DAG and its tables, with `slo_ms` as its SLO."""
    if not (math.isfinite(slo_ms) and slo_ms > 0):
        raise ValueError(f"slo_ms must be finite and > 0, got {slo_ms}")
    return {
        "name": workflow.name,
        "slo_ms": slo_ms,
        "functions": [
            {
                "name": f,
                "configs": [
                    {"batch": c.batch, "vcpu": c.vcpu, "vgpu": c.vgpu, "latency_ms": ms}
                    for c, ms in sorted(tables[f].items())
                ],
            }
            for f in workflow.functions
        ],
        "edges": [list(e) for e in workflow.edges],
    }
