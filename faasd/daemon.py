"""The daemon's lifecycle: build the services, bind the port, load functions, drain, stop.

Start order: GPUs (discovery, MPS daemon) → sandbox pool (fork server) → registry, controller,
gateway → HTTP listener bound → functions under `functions_dir` deployed → installed versions
inspected → READY=1.

Shutdown order (SIGTERM, SIGINT, or `stop()`), each step finishing before the next:

1. stop accepting: STOPPING=1; the controller answers new calls 503; the listener closes;
2. drain: calls already admitted finish (queued ones are still dispatched), up to
   `drain_timeout_s`; HTTP handlers answer them; async calls under way finish too (within
   the same `drain_timeout_s`), while queued ones stay recorded for the next start;
3. stop sandboxes: the pool stops every sandbox and the fork server;
4. GPUs: the MPS control daemon faasd started is stopped.
5. leave the cluster: resign the leadership, stop the etcd member, leave the gossip (with a
   `cluster_addr`; `faasd/cluster/node.py`). It joins right after the listener is bound.
   Deployments from other nodes stop being applied first of all (before step 1); the node
   starts applying them once its own startup functions and workflows are deployed
   (`faasd/cluster/replication.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiohttp import web

from esg.policies import make_policy
from faasd import claim
from faasd.api import create_app
from faasd.api.connections import (
    CONNECTIONS,
    ConnectionGuard,
    ConnectionLimits,
    effective_cap,
    raise_fd_limit,
)
from faasd.api.invocations import executor
from faasd.api.protocol_errors import JsonErrorsRunner
from faasd.auth.store import TokenCache
from faasd.auth.tokens import cluster_token, exposure_error
from faasd.catalog import Catalog
from faasd.clock import Clock, SystemClock
from faasd.cluster import replicated_functions, replicated_workflows
from faasd.cluster.dispatcher import ClusterNodes, Dispatcher
from faasd.cluster.entry import Entry
from faasd.cluster.node import Cluster, ClusterNode, http_address, make_cluster
from faasd.cluster.node_state import StateBook
from faasd.cluster.peers import Peers
from faasd.cluster.replicated_functions import FunctionKind
from faasd.cluster.replicated_workflows import WorkflowKind, users_in
from faasd.cluster.replication import Replicator
from faasd.cluster.settings import SERF_PORT, split_hostport
from faasd.cluster.state_reporter import StateReporter
from faasd.cluster.worker import Worker
from faasd.config import ConfigError, DaemonConfig, faasd_version
from faasd.controller import NODE, Controller, ProfileSource
from faasd.durable.runner import AsyncCalls
from faasd.durable.runner import Limits as AsyncLimits
from faasd.durable.store import CallStore, Kind
from faasd.errors import FaasdError
from faasd.functions.limits import node_memory_mb
from faasd.functions.registry import Registry
from faasd.functions.spec import FunctionVersion
from faasd.gateway import Gateway
from faasd.gpu.metrics import GpuGauges
from faasd.gpu.service import GpuService
from faasd.invoker import Invoker
from faasd.metrics import Metrics
from faasd.profiles.service import ProfileService
from faasd.profiles.store import ProfileStore
from faasd.sandbox.pool import SandboxPool, batch_sizes
from faasd.services import Services
from faasd.systemd import Notifier
from faasd.workflows.runner import WorkflowRunner
from faasd.workflows.service import Workflows
from faasd.workflows.store import WorkflowStore

log = logging.getLogger("faasd.daemon")


def function_dirs(root: Path) -> list[Path]:
    """Sub-directories of `root` that look like functions (hidden and `_` names skipped)."""
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


async def _stop_taking_work(services: Services) -> None:
    """No new call, profile or async call starts from now on (the first step of a stop)."""
    services.controller.stop_accepting()
    if services.profiles is not None:  # no new sandbox for a profile from now on
        await services.profiles.stop()
    if services.invocations is not None:
        # queued async calls stay recorded: the next start runs them (the runs under way
        # finish in the drain)
        services.invocations.stop_taking()


def workflow_dirs(root: Path) -> list[Path]:
    """Sub-directories of `root` that hold a workflow.yaml."""
    return [p for p in function_dirs(root) if (p / "workflow.yaml").is_file()]


class Daemon:
    """One faasd daemon. `async with Daemon(config) as d:` serves on `d.url` until exit."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        profiles: ProfileSource | None = None,
    ) -> None:
        """`profiles` replaces the daemon's own profile store as what the policy plans with
        (tests give fixed tables)."""
        self.config = config
        self.notifier = notifier or Notifier(env={})
        self.clock = clock or SystemClock()
        self._profiles = profiles
        self.port: int | None = None
        self.load_errors: dict[str, str] = {}
        self._stack = AsyncExitStack()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.connections: ConnectionGuard | None = None
        self._services: Services | None = None
        self._cluster: Cluster | None = None
        self._reporter: StateReporter | None = None
        self._entry: Entry | None = None
        self._peers: Peers | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.port}"

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the daemon is not started; call start() first")
        return self._services

    async def __aenter__(self) -> Daemon:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        for directory, what in ((config.workflows_dir, "workflows"),):
            if directory is not None and not directory.resolve().is_dir():
                raise ConfigError(f"{what} directory {directory.resolve()} does not exist; "
                                  f"check --{what} / {what}_dir")
        if config.functions_dir is not None and not config.functions_dir.resolve().is_dir():
            # before anything starts or binds: a typo must not look like a started daemon
            raise ConfigError(f"functions directory {config.functions_dir.resolve()} does not "
                              "exist; check --functions / functions_dir")
        state_dir = config.state_dir.resolve()
        refusal = exposure_error(config.host, TokenCache(state_dir).records(),
                                 self.clock.wall(), str(state_dir))
        if refusal is not None:
            raise ConfigError(refusal)
        listener = claim.bind(config.host, config.port)  # before anything is created
        self._stack.callback(listener.close)
        state_dir.mkdir(parents=True, exist_ok=True)
        self._stack.callback(os.close, claim.lock_state_dir(state_dir))
        scratch = claim.remove_upload_scratch(state_dir)
        if scratch:
            log.warning("removed %d upload(s) a stopped daemon left in %s/uploads", scratch,
                        state_dir)
        # a missing engine is a one-line error before anything else starts
        cluster = make_cluster(config.cluster_settings(), config.node_name,
                               config.vcpu_capacity, state_dir / "cluster", self.clock)
        self.notifier.status("discovering GPUs")
        try:
            gpus = await self._stack.enter_async_context(GpuService(config.gpu, state_dir))
        except ValueError as exc:  # an unknown fake machine name
            raise ConfigError(f"gpu: {exc}") from None
        self.notifier.status("starting the sandbox pool")
        pool = await self._stack.enter_async_context(
            SandboxPool(
                state_dir=state_dir,
                cgroup_parent=claim.cgroup_parent_for(config.cgroup_parent, state_dir),
                max_sandboxes=config.max_sandboxes,
                load_timeout_s=config.deploy_timeout_s,
                namespaces="auto" if config.allow_unconfined else "on",
                reap_leftovers=True,
                gpu=gpus,
                max_answer_bytes=config.max_answer_bytes,
            )
        )
        gpus.on_lost(pool.kill_sandboxes)
        metrics = Metrics(faasd_version())
        metrics.registry.register(GpuGauges(gpus))
        try:
            policy = make_policy(config.scheduler)
        except (ImportError, TypeError, ValueError) as exc:
            raise ConfigError(f"scheduler {config.scheduler!r} cannot be used: {exc}") from exc
        store = ProfileStore.in_state_dir(state_dir)
        self._stack.callback(store.close)  # closed by stop() already, unless start failed
        profiles = ProfileService(
            store,
            pool,
            node_vcpu=config.vcpu_capacity,
            profile_on_deploy=config.profile_on_deploy,
        )
        invoker = Invoker(pool, metrics, on_batch=profiles.on_batch)
        controller = Controller(
            policy=policy,
            executor=invoker,
            clock=self.clock,
            vcpu_capacity=config.vcpu_capacity,
            warm=pool.warm_counts,
            max_queue=config.max_queue_per_function,
            profiles=self._profiles or profiles,
            # no GPU found: the controller's per-event path stays what it was without GPUs
            gpus=gpus if gpus.table.gpus else None,
            node_name=cluster.name if isinstance(cluster, ClusterNode) else NODE,
        )
        registry = Registry(state_dir, config.function_defaults)
        node_limits = config.limits.resolved(
            node_memory_mb() or 1 << 40, config.vcpu_capacity, config.max_sandboxes)
        listeners: list[Callable[[str, FunctionVersion | None], None]] = [
            profiles.function_changed]
        catalog = Catalog(registry, pool, controller.in_flight, config.vcpu_capacity,
                          on_change=lambda name, version: _tell(listeners, name, version),
                          limits=node_limits)
        workflows = Workflows(WorkflowStore(state_dir), catalog, controller, self.clock)
        replicator = None
        book = None
        entry = worker = None
        if isinstance(cluster, ClusterNode):
            replicator = _replicator(cluster, catalog, workflows, config, state_dir)
            listeners.append(replicator.hook(replicated_functions.LABEL))
            book = StateBook()
            entry, worker = self._cross_node(cluster, catalog, controller, invoker, book,
                                             replicator.token)
        profiles.bind(catalog, busy=controller.pending_total)
        profiles.start()
        metrics.watch(controller.queue_lengths, lambda: pool.stats().idle)
        controller.on_decision = metrics.decided
        gateway = Gateway(entry or controller, self.clock, metrics)
        metrics.registry.register(profiles.collector())
        services = Services(
            config=config,
            clock=self.clock,
            catalog=catalog,
            controller=controller,
            gateway=gateway,
            metrics=metrics,
            pool_stats=_stats_view(pool),
            workflows=workflows,
            runner=WorkflowRunner(gateway, lambda name: catalog.get(name)[0], self.clock),
            profiles=profiles,
            gpus=gpus,
            cluster=cluster,
            replicator=replicator,
            state_book=book,
            entry=entry,
            worker=worker,
        )
        # an async call runs through the services (functions and workflows alike), and the
        # services hold the async calls: the executor gets them without, which it never uses
        async_calls = AsyncCalls(
            CallStore(state_dir), executor(services), self.clock,
            AsyncLimits(max_queued_per_target=config.max_async_queue_per_function,
                        retention_s=config.async_result_retention_s),
            rerun_refusal=lambda kind, name: _rerun_refusal(registry, workflows, kind, name),
        )
        self._services = dataclasses.replace(services, invocations=async_calls)
        app = create_app(config, self._services)
        limits = connection_limits(config)
        guard = ConnectionGuard(limits, self.clock.now, effective_cap(limits, raise_fd_limit()))
        app[CONNECTIONS] = self.connections = guard
        # handler_cancellation: a client that hangs up takes its queued call with it.
        self._runner = JsonErrorsRunner(
            app,
            shutdown_timeout=config.drain_timeout_s,
            access_log=None,
            handler_cancellation=True,
            keepalive_timeout=config.idle_timeout_s,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        # the listener is ours, not a TCPSite: every connection goes through the guard; its
        # socket was bound before anything else was created (claim.bind)
        self._listener = await asyncio.get_running_loop().create_server(
            guard.factory(server), sock=listener)
        guard.start()
        self.port = int(self._listener.sockets[0].getsockname()[1])
        if replicator is not None:  # what the startup deploys' records name
            replicator.http = self._http_address()
        log.info("at most %d connections at once (max_connections, open-file limit)", guard.cap)
        self.notifier.status("verifying the installed versions")
        await asyncio.to_thread(registry.verify)
        self._cluster = cluster  # from here on, stop() leaves the cluster
        self.notifier.status("joining the cluster")
        await cluster.start(self._http_address())
        log.info("faasd %s bound to %s; loading the startup functions (not ready yet)",
                 faasd_version(), self.url)
        await self._load_functions(catalog)
        workflows.load()
        await self._load_workflows(workflows)
        if replicator is not None:  # after the startup deploys: they are recorded first
            replicator.start()
        if book is not None:
            self._start_cluster_work(cluster, controller, book)
        await async_calls.start()  # after the functions: calls left by a stopped daemon run
        self._services.readiness.ready = True
        loaded = len(catalog.list())
        self.notifier.ready(f"serving {loaded} function(s) on {self.url}")
        self.notifier.start_watchdog()

    def _start_cluster_work(self, cluster: Cluster, controller: Controller,
                            book: StateBook) -> None:
        """Report this node's state to the leader, and start placing calls through it (the
        parts `_cross_node` made)."""
        assert self._services is not None and self._entry is not None
        worker, peers = self._services.worker, self._peers
        assert worker is not None and peers is not None
        self._entry.start()
        reporter = self._reporter = StateReporter(
            name=cluster.name, snapshot=controller.snapshot, cluster=cluster, book=book,
            clock=self.clock, peers=peers, arrived=self._services.state_arrived,
            busy_vcpu=lambda: worker.busy_vcpu)
        controller.on_change = worker.on_change = reporter.changed
        reporter.start()

    def _cross_node(self, cluster: ClusterNode, catalog: Catalog, controller: Controller,
                    invoker: Invoker, book: StateBook, token: str | None) -> tuple[Entry, Worker]:
        """The parts that place calls across the cluster (`faasd/cluster/entry.py`)."""
        self._peers = peers = Peers(token)
        worker = Worker(name=cluster.name, fence=cluster.fence, executor=invoker,
                        versions=lambda name: _current(catalog, name), clock=self.clock,
                        peers=peers, address=functools.partial(http_address, cluster))
        entry = self._entry = Entry(name=cluster.name, cluster=cluster, controller=controller,
                                    worker=worker, peers=peers, clock=self.clock)
        nodes = ClusterNodes(name=cluster.name, cluster=cluster, book=book, clock=self.clock,
                             batch_sizes=lambda name: _batch_sizes(catalog, name))
        controller.lead_cluster(Dispatcher(name=cluster.name, cluster=cluster, entry=entry,
                                           peers=peers, nodes=nodes), local=worker)
        return entry, worker

    def _http_address(self) -> str:
        """HOST:PORT where other nodes reach this API (the cluster address's host when the
        API listens on every interface)."""
        host = self.config.host
        if host in ("0.0.0.0", "::", "") and self.config.cluster_addr is not None:
            host = split_hostport(self.config.cluster_addr, SERF_PORT)[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def _load_functions(self, catalog: Catalog) -> None:
        if self.config.functions_dir is not None:
            root = self.config.functions_dir.resolve()
            for directory in function_dirs(root):
                self.notifier.status(f"deploying {directory.name}")
                try:
                    deployed = await catalog.deploy(directory, reuse_unchanged=True)
                except FaasdError as exc:
                    self.load_errors[directory.name] = exc.message
                    log.error("cannot deploy %s: %s", directory, exc.message)
                    continue
                how = "unchanged" if deployed.unchanged else "deployed"
                log.info("loaded %s v%d (%s)", deployed.version.name, deployed.version.version,
                         how)

    async def _load_workflows(self, workflows: Workflows) -> None:
        if self.config.workflows_dir is None:
            return
        for directory in workflow_dirs(self.config.workflows_dir.resolve()):
            self.notifier.status(f"deploying workflow {directory.name}")
            try:
                deployed, _ = await workflows.deploy(directory)
            except FaasdError as exc:
                self.load_errors[directory.name] = exc.message
                log.error("cannot deploy workflow %s: %s", directory, exc.message)
                continue
            log.info("loaded workflow %s v%d", deployed.spec.name, deployed.version)

    async def stop(self) -> None:
        """Stop accepting → drain in-flight calls → stop sandboxes (see the module doc)."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        # one drain for all: the HTTP handlers' and the async calls' share `drain_timeout_s`
        drain_until = asyncio.get_running_loop().time() + self.config.drain_timeout_s
        services = self._services
        if services is not None:
            await self._stop_cluster_traffic(services)
            await _stop_taking_work(services)
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            # Waits up to drain_timeout_s for running handlers, then closes their connections.
            await self._runner.cleanup()
        if self.connections is not None:
            await self.connections.stop()
        if services is not None and services.invocations is not None:
            # what still runs after this stays recorded as running: the next start runs it
            left_s = drain_until - asyncio.get_running_loop().time()
            await services.invocations.stop(max(0.0, left_s))
        await self._stop_placing()
        if services is not None:
            if not await services.controller.drain(timeout_s=1.0):
                log.warning("calls still queued after the drain; failing them")
            services.controller.close()
            await services.catalog.close()
            if services.profiles is not None:
                await services.profiles.close()
        await self.notifier.stop_watchdog()
        await self._stack.aclose()
        if self._cluster is not None:
            await self._cluster.stop()
        if services is not None:  # a start refused before anything ran says only why
            log.info("faasd stopped")

    async def _stop_cluster_traffic(self, services: Services) -> None:
        """No deploys from other nodes and no state reports to the leader from now on."""
        if services.replicator is not None:
            await services.replicator.stop()
        if self._reporter is not None:
            services.controller.on_change = None
            if services.worker is not None:
                services.worker.on_change = None
            await self._reporter.stop()

    async def _stop_placing(self) -> None:
        """After the handlers ended (their calls were placed to the end): no more placing of
        calls across the cluster."""
        if self._entry is not None:
            await self._entry.stop()
        if self._services is not None and self._services.worker is not None:
            await self._services.worker.close()
        if self._peers is not None:
            await self._peers.close()

    async def serve_until_signalled(self, on_ready: Callable[[Daemon], Any] | None = None) -> None:
        """Start, run until SIGTERM or SIGINT, then stop in order (what `faasd up` runs)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(self.start())
        signalled = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raises what made the start fail
                if on_ready is not None:
                    on_ready(self)
                await signalled
                log.info("signal received: draining in-flight calls")
            else:  # a signal while functions were still loading: give up loading
                log.info("signal received while starting; stopping")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            signalled.cancel()
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)


def _current(catalog: Catalog, name: str) -> FunctionVersion | None:
    """The version of `name` deployed here, if any (a worker runs it; see `worker.py`)."""
    try:
        return catalog.get(name)[0]
    except FaasdError:
        return None


def _batch_sizes(catalog: Catalog, name: str) -> range:
    version = _current(catalog, name)
    return range(1, 2) if version is None else batch_sizes(version)


def _replicator(cluster: ClusterNode, catalog: Catalog, workflows: Workflows,
                config: DaemonConfig, state_dir: Path) -> Replicator:
    """Functions, then the workflows built on them, kept the same on every node; the
    workflows' changes recorded, and a function used by a workflow anywhere kept."""
    key = cluster.settings.gossip_key
    token = cluster_token(key) if key is not None else None
    functions = FunctionKind(catalog, state_dir / "uploads", config.max_unpacked_bytes, token)
    replicator = Replicator(name=cluster.name, http="",
                            kinds=[functions, WorkflowKind(workflows)],
                            etcd=cluster.etcd_client, members=cluster.members, token=token)
    label = replicated_workflows.LABEL
    workflows.on_change = replicator.hook(label)
    workflows.recorded_users = lambda f: users_in(replicator.recorded(label), f)
    return replicator


def _tell(listeners: list[Callable[[str, FunctionVersion | None], None]], name: str,
          version: FunctionVersion | None) -> None:
    for listener in listeners:
        try:
            listener(name, version)
        except Exception:  # one listener's bug must not keep the others from hearing
            log.exception("a deploy listener failed on %s", name)


def connection_limits(config: DaemonConfig) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        min_body_rate_bps=config.min_body_rate_bps,
        idle_timeout_s=config.idle_timeout_s,
        max_connections=config.max_connections,
    )


def _rerun_refusal(registry: Registry, workflows: Workflows, kind: Kind,
                   name: str) -> str | None:
    """Why an async call to the function or workflow `name` that a restart cut short must not
    run again, or None. A workflow is run again only if every stage may be: the run that was
    cut short may have passed any of them. (A workflow no longer deployed runs again, and
    fails with the 404 a synchronous call would get.)"""
    if kind is Kind.FUNCTION:
        if _idempotent(registry, name):
            return None
        return f"{name!r} is not idempotent (idempotent: false)"
    workflow = workflows.find(name)
    stages = workflow.spec.functions if workflow is not None else ()
    once = [stage for stage in stages if not _idempotent(registry, stage)]
    if not once:
        return None
    return (f"workflow {name!r} has stage(s) {', '.join(once)} that are not idempotent "
            "(idempotent: false)")


def _idempotent(registry: Registry, name: str) -> bool:
    version = registry.get(name)
    return version is None or version.settings.idempotent


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the listener has no TCP address")


def _stats_view(pool: SandboxPool) -> Callable[[], dict[str, Any]]:
    def view() -> dict[str, Any]:
        stats = pool.stats()
        names = sorted(set(stats.alive) | set(stats.idle))
        return {
            "functions": {
                n: {"alive": stats.alive.get(n, 0), "idle": stats.idle.get(n, 0)} for n in names
            },
            "cold_starts": stats.cold_starts,
            "crashes": stats.crashes,
            "timeouts": stats.timeouts,
            "cgroups": pool.backend.value,
        }

    return view
