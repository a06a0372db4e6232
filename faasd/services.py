"""The long-lived services one daemon holds, passed to the HTTP app as one value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faasd.catalog import Catalog
from faasd.clock import Clock
from faasd.cluster.entry import Entry
from faasd.cluster.node import Cluster
from faasd.cluster.node_state import NodeState, StateBook
from faasd.cluster.replication import Replicator
from faasd.cluster.worker import Worker
from faasd.config import DaemonConfig
from faasd.controller import Controller
from faasd.durable.runner import AsyncCalls
from faasd.gateway import Gateway
from faasd.gpu.service import GpuService
from faasd.metrics import Metrics
from faasd.profiles.service import ProfileService
from faasd.workflows.runner import WorkflowRunner
from faasd.workflows.service import Workflows


@dataclass
class Readiness:
    """False while `faasd up` is still deploying its startup functions (the port is bound)."""

    ready: bool = False
    detail: str = "starting: loading functions"


@dataclass(frozen=True)
class Services:
    """`pool_stats` returns a JSON-able view of the sandboxes (for /healthz and describe)."""

    config: DaemonConfig
    clock: Clock
    catalog: Catalog
    controller: Controller
    gateway: Gateway
    metrics: Metrics
    pool_stats: Callable[[], dict[str, Any]]
    workflows: Workflows
    runner: WorkflowRunner
    readiness: Readiness = field(default_factory=Readiness)
    profiles: ProfileService | None = None
    #: the durable async calls; None: this daemon takes none
    invocations: AsyncCalls | None = None
    #: the node's GPU slices (a GpuService with no GPU offers 0 units)
    gpus: GpuService = field(default_factory=GpuService)
    cluster: Cluster | None = None  # None: a lone node (tests that build Services by hand)
    #: copies deployments between the cluster's nodes; None on a lone node
    replicator: Replicator | None = None
    #: the nodes' own reports of their state, kept while this node leads; None on a lone node
    state_book: StateBook | None = None
    #: in a cluster: where calls entering here are placed, and where others' batches run
    entry: Entry | None = None
    worker: Worker | None = None

    def state_arrived(self, state: NodeState, received_wall: float) -> None:
        """The leader took a node's report: how long its oldest change took to get here."""
        self.metrics.state_arrived(state.node, received_wall - state.changed_wall)
