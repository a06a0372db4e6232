"""Workflows as the daemon serves them: deploy, look up, remove, and guard their functions.

A deploy checks everything before anything changes: the file (`spec`), that every function
exists or comes with the workflow as a subdirectory, and that the tensors fit across every
edge (`wiring`) — with the subdirectories' signatures found by loading them in throwaway
sandboxes. Only then are the subdirectories deployed (a directory unchanged since its last
deploy keeps its version) and the workflow recorded, on disk and with the controller.

While a workflow uses a function, removing that function is refused with the workflow's name,
and a redeploy of it that would no longer fit the workflow's edges is refused too. In a
cluster, `recorded_users` adds the workflows deployed on other nodes (or still on their way
here), so the removal is refused on every node alike. A function and a workflow never share a
name (both are models on the V2 paths).

`adopt` serves a workflow deployed on another node, whose functions came on their own
(`faasd/cluster/replicated_workflows.py`); `on_change(name, spec)` hears of every deploy and,
with None, every removal.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from esg.model import Workflow
from faasd.catalog import Catalog
from faasd.clock import Clock
from faasd.errors import Conflict, NotFound
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.workflows.runner import DeployedWorkflow
from faasd.workflows.spec import WorkflowSpec, WorkflowSpecError, load_spec
from faasd.workflows.store import StoredWorkflow, WorkflowStore
from faasd.workflows.wiring import Signature, wire

log = logging.getLogger("faasd.workflows")


class Scheduler(Protocol):
    """What the service tells the controller."""

    def set_workflow(self, workflow: Workflow) -> None: ...
    def remove_workflow(self, name: str) -> None: ...


class Workflows:
    def __init__(
        self, store: WorkflowStore, catalog: Catalog, controller: Scheduler, clock: Clock,
        on_change: Callable[[str, WorkflowSpec | None], None] | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._controller = controller
        self._clock = clock
        self._deployed: dict[str, DeployedWorkflow] = {}
        self._lock = asyncio.Lock()
        self.on_change = on_change
        #: function -> the workflows deployed elsewhere in the cluster that use it
        self.recorded_users: Callable[[str], builtins.list[str]] = lambda _: []
        catalog.guard = self

    # ------------------------------------------------------------ look-ups

    def get(self, name: str) -> DeployedWorkflow:
        workflow = self._deployed.get(name)
        if workflow is None:
            raise NotFound(f"no workflow named {name!r}; deploy one with `faasd deploy DIR` "
                           "(a directory with workflow.yaml)")
        return workflow

    def find(self, name: str) -> DeployedWorkflow | None:
        return self._deployed.get(name)

    def list(self) -> builtins.list[DeployedWorkflow]:
        return [self._deployed[n] for n in sorted(self._deployed)]

    def users_of(self, function: str) -> builtins.list[str]:
        return sorted(n for n, w in self._deployed.items() if w.spec.uses(function))

    def missing(self, spec: WorkflowSpec) -> builtins.list[str]:
        """The functions of `spec` not deployed here."""
        deployed = {version.name for version, _ in self._catalog.list()}
        return [f for f in spec.functions if f not in deployed]

    # ------------------------------------------------------------ changes

    def load(self) -> None:
        """Serve the workflows recorded in the state directory (at start, after the
        functions): one whose functions no longer fit is logged and left out."""
        for stored in self._store.load():
            try:
                self._install(stored)
            except (NotFound, WorkflowSpecError) as exc:
                log.error("workflow %s v%d not served: %s", stored.spec.name, stored.version,
                          exc.message)

    async def deploy(
        self, source: Path, name: str | None = None, *, mode: str = "any"
    ) -> tuple[DeployedWorkflow, int | None]:
        """Deploy the workflow directory `source`; (the workflow, the version it replaced)."""
        if not source.is_absolute() or not source.is_dir():
            raise WorkflowSpecError(f"{source} is not an absolute path to a directory on the "
                                    "daemon's host", file=str(source))
        spec = await asyncio.to_thread(load_spec, source, name)
        async with self._lock:
            old = self._deployed.get(spec.name)
            if mode == "create" and old is not None:
                raise Conflict(f"workflow {spec.name!r} exists; update it with PUT "
                               "(`faasd deploy` does this)")
            if mode == "update" and old is None:
                raise NotFound(f"no workflow named {spec.name!r} to update; POST it first")
            self.check_name_free_of_functions(spec.name)
            signatures = await self._signatures(spec)
            wire(spec, signatures, file=str(source / "workflow.yaml"))
            for function, directory in spec.local.items():
                await self._catalog.deploy(directory, function, reuse_unchanged=True)
            stored = StoredWorkflow(spec, self._store.next_version(spec.name),
                                    self._clock.wall())
            deployed = self._install(stored)
            await asyncio.to_thread(self._store.save, stored)
        log.info("deployed workflow %s v%d from %s (%d functions, SLO %g ms)", spec.name,
                 stored.version, source, len(spec.functions), spec.slo_ms)
        self._changed(spec.name, spec)
        return deployed, None if old is None else old.version

    async def adopt(self, spec: WorkflowSpec) -> DeployedWorkflow:
        """Serve `spec` as deployed on another node: its functions must be deployed here
        already (NotFound otherwise) and fit its edges (WorkflowSpecError otherwise)."""
        async with self._lock:
            self.check_name_free_of_functions(spec.name)
            stored = StoredWorkflow(spec, self._store.next_version(spec.name),
                                    self._clock.wall())
            deployed = self._install(stored)
            await asyncio.to_thread(self._store.save, stored)
        log.info("deployed workflow %s v%d as the cluster recorded it", spec.name,
                 stored.version)
        self._changed(spec.name, spec)
        return deployed

    async def remove(self, name: str) -> DeployedWorkflow:
        async with self._lock:
            workflow = self.get(name)
            del self._deployed[name]
            self._controller.remove_workflow(name)
            await asyncio.to_thread(self._store.remove, name, workflow.version)
        log.info("removed workflow %s v%d", name, workflow.version)
        self._changed(name, None)
        return workflow

    # ------------------------------------------------------------ the catalog's guard

    def check_name(self, name: str) -> None:
        if name in self._deployed:
            raise Conflict(f"{name!r} is the name of a workflow; choose another --name for the "
                           "function")

    def check_deploy(self, version: FunctionVersion, info: ModelInfo) -> None:
        """Refuse a function version that would break a workflow's edges."""
        self.check_name(version.name)
        for workflow in self._deployed.values():
            if not workflow.spec.uses(version.name):
                continue
            signatures = {
                f: Signature(info.inputs, info.outputs) if f == version.name
                else self._signature(f)
                for f in workflow.spec.functions
            }
            try:
                wire(workflow.spec, signatures, file=f"workflow {workflow.spec.name}")
            except WorkflowSpecError as exc:
                raise Conflict(
                    f"{version.name} is used by workflow {workflow.spec.name!r}, and this "
                    f"version would not fit it: {exc.message}; change the workflow first",
                    workflow=workflow.spec.name) from None

    def check_remove(self, name: str) -> None:
        users = sorted(set(self.users_of(name)) | set(self.recorded_users(name)))
        if users:
            raise Conflict(
                f"function {name!r} is used by workflow(s) {users}; remove them first "
                f"(faasd remove {users[0]})", workflows=users)

    def check_name_free_of_functions(self, name: str) -> None:
        try:
            self._catalog.get(name)
        except NotFound:
            return
        raise Conflict(f"{name!r} is the name of a deployed function; a workflow needs a name of "
                       "its own: choose another --name")

    # ------------------------------------------------------------ helpers

    def _changed(self, name: str, spec: WorkflowSpec | None) -> None:
        if self.on_change is not None:
            try:
                self.on_change(name, spec)
            except Exception:  # a listener's bug must not undo a deploy that is done
                log.exception("on_change(%s) failed", name)

    def _install(self, stored: StoredWorkflow) -> DeployedWorkflow:
        spec = stored.spec
        signatures = {f: self._signature(f) for f in spec.functions}
        wiring = wire(spec, signatures, file=f"workflow {spec.name}")
        deployed = DeployedWorkflow(spec, wiring, stored.version, stored.deployed_at)
        self._deployed[spec.name] = deployed
        self._controller.set_workflow(spec.to_esg())
        return deployed

    async def _signatures(self, spec: WorkflowSpec) -> dict[str, Signature]:
        signatures = {}
        for function in spec.functions:
            directory = spec.local.get(function)
            if directory is not None:
                info = await self._catalog.check(directory, function)
                signatures[function] = Signature(info.inputs, info.outputs)
                continue
            try:
                signatures[function] = self._signature(function)
            except NotFound:
                raise WorkflowSpecError(
                    f"workflow.yaml: functions names {function!r}, which is not deployed and "
                    f"is no subdirectory of the workflow; deploy it first or add {function}/",
                    key="functions") from None
        return signatures

    def _signature(self, function: str) -> Signature:
        _, info = self._catalog.get(function)
        return Signature(info.inputs, info.outputs)
