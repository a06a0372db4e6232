"""Workflows as the replicator keeps them (`replication.py`): the spec travels in the record.

A workflow is a small document (SLO, functions, edges), so its record in etcd carries it,
with the digest of its canonical JSON; nothing is pulled. The functions a workflow directory
brought with it were deployed as functions on the deploying node and reach the others as
functions. A node installs the workflow through `Workflows.adopt` once every function it names
is deployed there and fits its edges; until then it is `NotYet`, retried every round and shown
as `waiting` with what it waits for. A spec this version of faasd cannot read, or whose digest
differs from the record's, is refused.

`users_in` answers, from the records, which workflows use a function anywhere in the cluster:
the workflows service refuses that function's removal on every node alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faasd.cluster.deployments import Deployment
from faasd.cluster.replication import NotYet
from faasd.errors import DeployError, NotFound
from faasd.workflows.service import Workflows
from faasd.workflows.spec import WorkflowSpec, WorkflowSpecError, parse_spec

LABEL = "workflows"
PREFIX = "faasd/workflows/"


def content_of(spec: WorkflowSpec) -> dict[str, Any]:
    """The spec as its record carries it (the name is the record's)."""
    return {k: v for k, v in spec.to_json().items() if k != "name"}


def spec_digest(spec: WorkflowSpec) -> str:
    canonical = json.dumps(spec.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def users_in(records: Mapping[str, Deployment], function: str) -> list[str]:
    """The workflows in `records` (not removed) whose spec names `function`."""
    return sorted(n for n, r in records.items()
                  if not r.removed and r.content is not None
                  and function in r.content.get("functions", ()))


@dataclass
class WorkflowKind:
    workflows: Workflows
    label: str = LABEL
    prefix: str = PREFIX

    async def served(self) -> dict[str, str]:
        return {w.spec.name: spec_digest(w.spec) for w in self.workflows.list()}

    async def current(self, name: str) -> tuple[str, dict[str, Any] | None]:
        workflow = self.workflows.find(name)
        if workflow is None:
            return "", None
        return spec_digest(workflow.spec), content_of(workflow.spec)

    async def install(self, record: Deployment, sources: list[str]) -> None:
        spec = self._spec(record)
        missing = self.workflows.missing(spec)
        if missing:
            raise NotYet(f"waiting for function(s) {', '.join(missing)} to be deployed here")
        try:
            await self.workflows.adopt(spec)
        except (NotFound, WorkflowSpecError) as exc:  # a function's new version on its way
            raise NotYet(f"waiting for its functions to fit: {exc.message}") from None

    async def remove(self, name: str) -> None:
        if self.workflows.find(name) is not None:
            await self.workflows.remove(name)

    async def close(self) -> None:
        return None

    @staticmethod
    def _spec(record: Deployment) -> WorkflowSpec:
        where = f"the cluster's record of workflow {record.name} (from {record.origin})"
        spec = parse_spec(record.content, record.name, file=where)
        if spec_digest(spec) != record.digest:
            raise DeployError(f"{where}: its spec has digest {spec_digest(spec)[:12]}, the "
                              f"record says {record.digest[:12]}; redeploy the workflow",
                              file=where)
        return spec
