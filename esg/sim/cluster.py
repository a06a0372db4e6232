"""The simulated cluster: nodes with vCPUs and MIG-sliced GPUs, warm sandboxes, the network.

Defaults are the paper's testbed (ESG §5.1): 16 nodes × 16 vCPUs × 1 GPU of 7 MIG slice units.
Slices are fungible units with a size check (a slice is 1, 2, 3, 4 or 7 units); real MIG also
constrains where on the GPU an instance may start, which we do not model. An idle warm sandbox
holds no vCPU or slice (the slice is re-created on demand; that cost is in the cold start).
A pre-warmed sandbox (`esg.policy.Prewarm`) holds its shape's vCPUs and slice while it starts
(the cold-start time), counts against the function's `max_instances` from then on, and is then
parked idle like a sandbox whose batch finished. Neither an idle sandbox nor a start is billed
(the engine bills execution only), so pre-warmed idle time costs what keep-alive costs: nothing.

A sandbox is one process of one function with a (vCPUs, slice) shape; it runs batches of any
size, so a warm sandbox serves every configuration of that shape, and `NodeView.warm` lists it
under each profiled batch size of the shape.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from esg.model import GPU_UNITS, Config
from esg.policy import GpuView, NodeView


@dataclass(frozen=True)
class ClusterSpec:
    """Shape of the cluster and the costs of moving data and starting sandboxes."""

    nodes: int = 16
    vcpu_per_node: int = 16
    gpus_per_node: int = 1
    units_per_gpu: int = GPU_UNITS
    #: 10 GbE between nodes; one message costs latency + bytes / bandwidth.
    net_bytes_per_s: float = 1.25e9
    net_latency_s: float = 0.0002
    #: Fork from a server with onnxruntime imported + session creation (faasd's sandbox path;
    #: a Docker start as in OpenWhisk would be 0.5–1 s).
    cold_start_cpu_s: float = 0.25
    #: Extra for a GPU sandbox: CUDA context on a MIG instance and the weights to the device.
    cold_start_gpu_extra_s: float = 0.75
    #: How long an idle sandbox stays warm (OpenWhisk's default idle timeout is 10 minutes).
    keep_alive_s: float = 600.0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.vcpu_per_node < 1 or self.gpus_per_node < 0:
            raise ValueError(f"a cluster needs nodes and vCPUs, got {self}")

    def node_names(self) -> tuple[str, ...]:
        return tuple(f"node{i:02d}" for i in range(self.nodes))

    def transfer_s(self, nbytes: float) -> float:
        return self.net_latency_s + nbytes / self.net_bytes_per_s

    def cold_start_s(self, config: Config) -> float:
        return self.cold_start_cpu_s + (self.cold_start_gpu_extra_s if config.vgpu else 0.0)

    @property
    def total_vcpu(self) -> int:
        return self.nodes * self.vcpu_per_node

    @property
    def total_units(self) -> int:
        return self.nodes * self.gpus_per_node * self.units_per_gpu


@dataclass
class NodeState:
    """Mutable state of one node, owned by the engine.

    `batches` lists each function's profiled batch sizes: a warm sandbox of a shape is shown
    to policies under every configuration of that shape.
    """

    name: str
    total_vcpu: int
    free_vcpu: int
    gpu_free: list[int]
    units_per_gpu: int
    batches: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: (function, vcpu, vgpu) -> expiry times of idle warm sandboxes (a min-heap).
    idle: dict[tuple[str, int, int], list[float]] = field(default_factory=dict)
    #: sandboxes running a batch, per function
    busy: dict[str, int] = field(default_factory=dict)
    _warm: dict[tuple[str, Config], int] = field(default_factory=dict)
    _warm_view: dict[tuple[str, Config], int] | None = None
    _view: NodeView | None = None

    @classmethod
    def fresh(
        cls, name: str, spec: ClusterSpec, batches: Mapping[str, tuple[int, ...]] | None = None
    ) -> NodeState:
        return cls(
            name=name,
            total_vcpu=spec.vcpu_per_node,
            free_vcpu=spec.vcpu_per_node,
            gpu_free=[spec.units_per_gpu] * spec.gpus_per_node,
            units_per_gpu=spec.units_per_gpu,
            batches=batches or {},
        )

    def fits(self, config: Config, gpu: int | None) -> bool:
        if config.vcpu > self.free_vcpu:
            return False
        if not config.vgpu:
            return True
        return gpu is not None and 0 <= gpu < len(self.gpu_free) and (
            self.gpu_free[gpu] >= config.vgpu
        )

    def hold(self, config: Config, gpu: int | None, sign: int) -> None:
        """Take (sign=-1) or give back (sign=+1) a batch's vCPUs and slice units."""
        self.free_vcpu += sign * config.vcpu
        if config.vgpu and gpu is not None:
            self.gpu_free[gpu] += sign * config.vgpu
        self._view = None

    def take_warm(
        self, function: str, config: Config, now_s: float, max_instances: int | None = None
    ) -> bool:
        """Use an idle warm sandbox of this shape if one is alive; True on a warm start.

        A cold start beyond the function's `max_instances` sandboxes on this node (busy and
        idle) stops its idle sandbox of another shape that was idle the longest, as the
        daemon's pool does at the cap."""
        key = (function, config.vcpu, config.vgpu)
        heap = self.idle.get(key)
        while heap and heap[0] <= now_s:
            heapq.heappop(heap)
        self._count(key)
        self.busy[function] = self.busy.get(function, 0) + 1
        if heap:
            # The sandbox idle the longest is the one whose keep-alive expires first.
            heapq.heappop(heap)
            self._count(key)
            return True
        if max_instances is not None:
            self._evict(function, max_instances, now_s)
        return False

    def _evict(self, function: str, cap: int, now_s: float) -> None:
        shapes = [k for k in self.idle if k[0] == function]
        alive = self.busy[function] + sum(
            sum(1 for expiry in self.idle[k] if expiry > now_s) for k in shapes
        )
        while alive > cap:
            live = [k for k in shapes if any(expiry > now_s for expiry in self.idle[k])]
            if not live:
                return  # only busy ones: the policy ran more batches than the cap
            oldest = min(live, key=lambda k: self.idle[k][0])
            heapq.heappop(self.idle[oldest])
            self._count(oldest)
            alive -= 1

    def sandboxes(self, function: str, now_s: float) -> int:
        """Live sandboxes of `function` here: busy or starting, and idle ones not expired."""
        idle = sum(
            sum(1 for expiry in heap if expiry > now_s)
            for key, heap in self.idle.items() if key[0] == function
        )
        return self.busy.get(function, 0) + idle

    def start(self, function: str, config: Config, gpu: int | None) -> None:
        """Begin a pre-warm: the shape's resources are held and it counts as a live sandbox
        until `park` (after `hold(+1)`) makes it idle."""
        self.hold(config, gpu, -1)
        self.busy[function] = self.busy.get(function, 0) + 1

    def park(self, function: str, config: Config, expires_s: float) -> None:
        key = (function, config.vcpu, config.vgpu)
        self.busy[function] = max(0, self.busy.get(function, 0) - 1)
        heapq.heappush(self.idle.setdefault(key, []), expires_s)
        self._count(key)

    def expire(self, now_s: float) -> None:
        for key, heap in self.idle.items():
            if heap and heap[0] <= now_s:
                while heap and heap[0] <= now_s:
                    heapq.heappop(heap)
                self._count(key)

    def _count(self, key: tuple[str, int, int]) -> None:
        """Refresh the policy-facing warm counts of one sandbox shape."""
        function, vcpu, vgpu = key
        n = len(self.idle.get(key, ()))
        old = self._warm.get((function, Config(self.batches.get(function, (1,))[0], vcpu, vgpu)))
        if old == (n or None):
            return
        for batch in self.batches.get(function, (1,)):
            if n:
                self._warm[(function, Config(batch, vcpu, vgpu))] = n
            else:
                self._warm.pop((function, Config(batch, vcpu, vgpu)), None)
        self._warm_view = None
        self._view = None

    def view(self) -> NodeView:
        """The policy's view (a fresh copy whenever something changed)."""
        if self._view is None:
            gpus = tuple(
                GpuView(index=i, free_units=free, total_units=self.units_per_gpu)
                for i, free in enumerate(self.gpu_free)
            )
            if self._warm_view is None:
                self._warm_view = dict(self._warm)
            self._view = NodeView(self.name, self.total_vcpu, self.free_vcpu, gpus,
                                  self._warm_view)
        return self._view
