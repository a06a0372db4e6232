"""The vocabulary every scheduler speaks: configurations, jobs, workflows.

Pure data, validated at construction. Times inside the seam are seconds (`_s`) on the driver's
clock (the daemon's monotonic clock or the simulator's); profiled latencies are milliseconds
(`_ms`), as the profiler and `python -m esg plan` write them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from esg.errors import WorkflowError

#: A GPU has 7 slice units; MIG instances come in these sizes only (no 5g or 6g profile).
GPU_UNITS = 7
MIG_SIZES = (1, 2, 3, 4, 7)


@dataclass(frozen=True, order=True)
class Config:
    """How one batch of one function runs: jobs per batch, CPU cores, GPU slice units (0 = CPU)."""

    batch: int
    vcpu: int
    vgpu: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.vcpu < 1:
            raise ValueError(f"vcpu must be >= 1, got {self.vcpu}")
        if not 0 <= self.vgpu <= GPU_UNITS:
            raise ValueError(f"vgpu must be in 0..{GPU_UNITS}, got {self.vgpu}")
        # Planners hash configurations by the hundred per decision; the generated __hash__
        # builds a tuple each time.
        object.__setattr__(self, "_hash", hash((self.batch, self.vcpu, self.vgpu)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __reduce__(self) -> tuple[type[Config], tuple[int, int, int]]:
        return Config, (self.batch, self.vcpu, self.vgpu)  # rebuilt with its hash


@dataclass(frozen=True)
class Job:
    """One function invocation inside one application call, waiting in its AFW queue.

    `request_start_s` is when the application call arrived (the SLO clock starts there);
    `enqueued_s` is when this job entered its queue; `deadline_s` = request start + SLO.
    `input_node` names the node holding the predecessor's output (None for an entry job).
    """

    id: str
    request_id: str
    app: str
    function: str
    request_start_s: float
    enqueued_s: float
    deadline_s: float
    input_node: str | None = None
    input_bytes: int = 0


@dataclass(frozen=True)
class Workflow:
    """An application: a DAG of functions with an end-to-end SLO.

    Validated at construction: acyclic, at least one function, every edge between known
    functions. A function invoked alone is `Workflow.single(name, slo_s)`.
    """

    name: str
    functions: tuple[str, ...]
    edges: tuple[tuple[str, str], ...] = ()
    slo_s: float = float("inf")
    graph: nx.DiGraph = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.functions:
            raise WorkflowError(self.name, "a workflow needs at least one function")
        if len(set(self.functions)) != len(self.functions):
            raise WorkflowError(self.name, "function names must be unique within a workflow")
        if self.slo_s <= 0:
            raise WorkflowError(self.name, f"slo must be positive, got {self.slo_s}")
        graph = nx.DiGraph()
        graph.add_nodes_from(self.functions)
        for src, dst in self.edges:
            for end in (src, dst):
                if end not in graph:
                    raise WorkflowError(
                        self.name, f"edge {src} -> {dst} names unknown function {end!r}"
                    )
            graph.add_edge(src, dst)
        if not nx.is_directed_acyclic_graph(graph):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(graph))
            raise WorkflowError(self.name, f"workflow has a cycle through {cycle}; remove an edge")
        object.__setattr__(self, "graph", graph)
        # Planners ask for it on every SLO split: networkx sorts in tens of microseconds.
        object.__setattr__(self, "_order", tuple(nx.lexicographical_topological_sort(graph)))

    @classmethod
    def single(cls, function: str, slo_s: float = float("inf")) -> Workflow:
        return cls(name=function, functions=(function,), slo_s=slo_s)

    @classmethod
    def from_edges(
        cls, name: str, functions: Iterable[str], edges: Iterable[tuple[str, str]], slo_s: float
    ) -> Workflow:
        return cls(name, tuple(functions), tuple((a, b) for a, b in edges), slo_s)

    def predecessors(self, function: str) -> tuple[str, ...]:
        return tuple(self.graph.predecessors(function))

    def successors(self, function: str) -> tuple[str, ...]:
        return tuple(self.graph.successors(function))

    def entries(self) -> tuple[str, ...]:
        return tuple(f for f in self.functions if self.graph.in_degree(f) == 0)

    def exits(self) -> tuple[str, ...]:
        return tuple(f for f in self.functions if self.graph.out_degree(f) == 0)

    def topological_order(self) -> tuple[str, ...]:
        return self._order  # type: ignore[attr-defined,no-any-return]

    def __reduce__(
        self,
    ) -> tuple[type[Workflow], tuple[str, tuple[str, ...], tuple[tuple[str, str], ...], float]]:
        return Workflow, (self.name, self.functions, self.edges, self.slo_s)  # graph rebuilt


@dataclass(frozen=True)
class Profile:
    """Profiled mean latency (ms) of one function per configuration.

    `version` changes whenever the table changes, so plan caches can key on it.
    """

    function: str
    latency_ms: Mapping[Config, float]
    version: int = 0

    def __post_init__(self) -> None:
        if not self.latency_ms:
            raise ValueError(f"profile of {self.function!r} has no configurations")
        for config, ms in self.latency_ms.items():
            if not ms > 0:
                raise ValueError(f"profile of {self.function!r}: latency of {config} must be > 0")

    def configs(self) -> tuple[Config, ...]:
        return tuple(sorted(self.latency_ms))
