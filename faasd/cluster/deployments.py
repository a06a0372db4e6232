"""The cluster's record of what is deployed, and what one node must do to match it (pure).

etcd holds one key per deployed thing under its kind's prefix (`faasd/functions/<name>`,
`faasd/workflows/<name>`), whose value is a `Deployment`: the content digest of what was
deployed, the node that deployed it and that node's HTTP address, and for a kind small enough
to travel in the record (a workflow's spec) the content itself; a function's files are pulled
from a node that serves them. A removal leaves a tombstone (digest ""), so that a node that was
down while it was removed does not take its own copy for a new deploy and publish it back.
Each node compares the records with what it serves (`plan`) and pulls, removes or publishes.
Two nodes deploying one name at once: the last write to etcd wins, and both converge on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

#: Per node: the deployments it could not apply, per kind
#: ({"functions": {name: {"digest", "error", "state"}}, ...}), JSON.
STATUS_PREFIX = "faasd/replication/"


@dataclass(frozen=True)
class Deployment:
    """`digest` "" is a removal. `http` is where `origin` serves what it deployed
    (HOST:PORT); `content` is the deployed document itself where the kind carries it in the
    record (a workflow's spec as JSON), else None."""

    name: str
    digest: str
    origin: str
    http: str
    content: Mapping[str, Any] | None = None

    @property
    def removed(self) -> bool:
        return not self.digest

    def to_json(self) -> str:
        doc = asdict(self)
        if self.content is None:
            del doc["content"]
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Deployment | None:
        """None for a value this version of faasd cannot read (it is then left alone)."""
        try:
            doc = json.loads(text)
            content = doc.get("content")
            if content is not None and not isinstance(content, dict):
                return None
            return cls(str(doc["name"]), str(doc["digest"]), str(doc["origin"]),
                       str(doc["http"]), content)
        except (ValueError, KeyError, TypeError, AttributeError):
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
