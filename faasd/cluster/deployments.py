"""The cluster's record of deployed functions, and what one node must do to match it (pure).

etcd holds one key per function, `faasd/functions/<name>`, whose value is a `Deployment`: the
content digest of the deployed directory (`faasd.archive.tree_digest`), the node that deployed
it and that node's HTTP address. A removal leaves a tombstone (digest ""), so that a node
that was down while the function was removed does not take its own copy for a new deploy and
publish it back. Each node compares the record with what it serves (`plan`) and pulls, removes
or publishes. Two nodes deploying one name at once: the last write to etcd wins, and both
converge on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass
from enum import StrEnum

PREFIX = "faasd/functions/"
#: Per node: the deployments it could not apply (name -> {"digest", "error"}), JSON.
STATUS_PREFIX = "faasd/replication/"


@dataclass(frozen=True)
class Deployment:
    """`digest` "" is a removal. `http` is where `origin` serves the archive (HOST:PORT)."""

    name: str
    digest: str
    origin: str
    http: str

    @property
    def removed(self) -> bool:
        return not self.digest

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Deployment | None:
        """None for a value this version of faasd cannot read (it is then left alone)."""
        try:
            doc = json.loads(text)
            return cls(str(doc["name"]), str(doc["digest"]), str(doc["origin"]),
                       str(doc["http"]))
        except (ValueError, KeyError, TypeError):
            return None


class Step(StrEnum):
    PULL = "pull"            # fetch the recorded version from a node that has it, deploy it
    REMOVE = "remove"        # the cluster removed it: remove the local copy
    PUBLISH = "publish"      # a local function the cluster has no record of: record it


@dataclass(frozen=True)
class Action:
    step: Step
    name: str
    digest: str = ""
    record: Deployment | None = None


def plan(records: Mapping[str, Deployment], local: Mapping[str, str],
         busy: Set[str] = frozenset()) -> list[Action]:
    """What this node does so that its functions (`local`: name -> digest of the version it
    serves) match `records`. `busy` names are left alone this round: a local change not yet
    published, a pull in progress, a version that failed here and is not retried."""
    actions = []
    for name in sorted(set(records) | set(local)):
        if name in busy:
            continue
        record, have = records.get(name), local.get(name)
        if record is None:
            if have is not None:
                actions.append(Action(Step.PUBLISH, name, have))
        elif record.removed:
            if have is not None:
                actions.append(Action(Step.REMOVE, name, record=record))
        elif have != record.digest:
            actions.append(Action(Step.PULL, name, record.digest, record))
    return actions
