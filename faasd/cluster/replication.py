"""What is deployed on any node is deployed on every node; a node that joins catches up.

The choice, as a user of Nomad or OpenFaaS would expect it: etcd, which the cluster already
runs for its election, is the source of truth for *what* is deployed (`deployments.py`: one
small record per function or workflow, with a content digest); what a record names reaches
each node from a node that has it. This module is the part common to every kind of
deployment; a `Kind` says how one kind is served, recorded and installed (functions:
`replicated_functions.py`, whose files are pulled over HTTP; workflows:
`replicated_workflows.py`, whose spec travels in the record):

- a deploy or removal through any node's API (or its startup directories) is applied there
  first, with every local check, then recorded in etcd (`on_change`);
- every node reads the records every `every_s` and applies the difference (`plan`), kind by
  kind in the order given (functions before the workflows built on them), through the same
  service calls as a local deploy; a node started later does the same for everything
  recorded, which is its catch-up;
- a record this node cannot apply *yet* (`NotYet`: the files unreachable for now, a
  workflow's functions not arrived, a function's removal waiting for its workflow's) is
  retried by itself and shown as `waiting`; one it cannot apply at all (a model that does not
  load here) is not retried until the record changes, and shown as `failed`. Both are
  reported in etcd under `faasd/replication/<node>`, so that `GET /system/nodes` on any node
  shows them in that node's `replication` entry.

Without etcd (workers only, no voter) nothing is replicated and `replication` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from faasd.cluster.deployments import STATUS_PREFIX, Action, Deployment, Step, plan
from faasd.cluster.errors import EtcdError
from faasd.cluster.etcd_client import EtcdClient
from faasd.cluster.members import Member
from faasd.errors import FaasdError

log = logging.getLogger("faasd.cluster")

#: how long a version this node cannot deploy is left alone while its record stays the same
FAILED_RETRY_S = 300.0
#: How long `GET /system/nodes` waits for the other nodes' reports in etcd.
ANNOTATE_TIMEOUT_S = 0.25


class NotYet(Exception):
    """A record this node cannot apply yet, for a reason expected to pass; retried after
    `retry_s` (0: the next round)."""

    def __init__(self, message: str, retry_s: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_s = retry_s


class Kind(Protocol):
    """One kind of deployment kept the same on every node. `label` names it in
    `/system/nodes` ("functions"); its records live under the etcd key prefix `prefix`."""

    label: str
    prefix: str

    async def served(self) -> dict[str, str]:
        """name -> digest of everything this node serves."""
        ...

    async def current(self, name: str) -> tuple[str, dict[str, Any] | None]:
        """(digest, content for the record) of what this node serves as `name`; digest ""
        when it serves nothing by that name."""
        ...

    async def install(self, record: Deployment, sources: list[str]) -> None:
        """Serve `record` here; `sources` are the HTTP HOST:PORTs that may serve its files,
        best first. NotYet, or a FaasdError when this node cannot serve it."""
        ...

    async def remove(self, name: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Failure:
    digest: str
    error: str
    waiting: bool
    retry_at: float  # loop time

    def to_json(self) -> dict[str, str]:
        return {"digest": self.digest, "error": self.error,
                "state": "waiting" if self.waiting else "failed"}


@dataclass
class Track:
    """One kind's state on this node."""

    kind: Kind
    records: dict[str, Deployment] = field(default_factory=dict)
    #: local changes not yet recorded (None: their record is being made), and how many
    #: recordings of each are under way
    pending: dict[str, Deployment | None] = field(default_factory=dict)
    writers: Counter[str] = field(default_factory=Counter)
    #: changes the replicator is making: name -> whether it is removing it
    applying: dict[str, bool] = field(default_factory=dict)
    #: each local change's number (`changes` counts them): a round leaves alone the names
    #: changed here since it began reading etcd, whose records it may have read stale
    changes: int = 0
    changed: dict[str, int] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)


@dataclass
class Replicator:
    """`kinds` in the order their records are applied; `etcd()` is the cluster's etcd
    client once known (None before: nothing to do); `members()` the gossip's members; `http`
    this node's HTTP HOST:PORT; `token` the cluster token, which the kinds send on pulls and
    the API accepts (None: no API tokens to satisfy)."""

    name: str
    http: str
    kinds: list[Kind]
    etcd: Callable[[], EtcdClient | None]
    members: Callable[[], list[Member]]
    token: str | None = None
    every_s: float = 0.5
    _tracks: dict[str, Track] = field(default_factory=dict)
    _reported: dict[str, Any] | None = None
    _task: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._tracks = {kind.label: Track(kind) for kind in self.kinds}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for kind in self.kinds:
            await kind.close()

    # ------------------------------------------------------------ local changes

    def hook(self, label: str) -> Callable[[str, object], None]:
        """The listener a kind's service calls after each deploy or removal of `name`."""
        def changed(name: str, deployed: object = None) -> None:
            self.on_change(label, name, removed=deployed is None)
        return changed

    def on_change(self, label: str, name: str, removed: bool = False) -> None:
        """A deploy or removal made here, by a user, is recorded. The change the replicator
        is making to `name` itself is not; a user's change of the other kind while it does
        (a removal while it installs) is: the install's last steps still ran when a user's
        removal came in, and the removal was taken for the replicator's own."""
        track = self._tracks[label]
        if track.applying.get(name) is removed:
            return
        track.pending.setdefault(name, None)
        track.writers[name] += 1
        track.changes += 1
        track.changed[name] = track.changes
        task = asyncio.ensure_future(self._record(track, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def recorded(self, label: str) -> dict[str, Deployment]:
        """The cluster's records of a kind as this node knows them, with the local changes
        it is still recording in their place (a workflow removed here a moment ago is
        removed, even before etcd has heard)."""
        track = self._tracks[label]
        mine = {n: r for n, r in track.pending.items() if r is not None}
        return {**{n: r for n, r in track.records.items() if n not in track.pending}, **mine}

    async def _record(self, track: Track, name: str) -> None:
        try:
            digest, content = await track.kind.current(name)
            record = Deployment(name, digest, self.name, self.http, content)
            track.pending[name] = record
            # until etcd takes it (a deploy must not be lost to a blip), unless a later
            # change of the same name has come to be recorded in its place
            while track.pending.get(name) is record:
                client = self.etcd()
                try:
                    if client is not None:
                        await client.put(track.kind.prefix + name, record.to_json())
                        track.records[name] = record
                        track.failures.pop(name, None)
                        log.info("recorded %s of %s (%s %s) for the cluster",
                                 "the removal" if record.removed else "the deploy", name,
                                 track.kind.label, digest[:12])
                        return
                except EtcdError as exc:
                    log.warning("cannot record %s in etcd yet: %s", name, exc.message)
                await asyncio.sleep(self.every_s)
        finally:
            track.writers[name] -= 1
            if not track.writers[name]:
                del track.writers[name], track.pending[name]

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except EtcdError as exc:
                log.debug("replication: etcd not answering: %s", exc.message)
            except Exception:  # a bug must not stop replication for good
                log.exception("replication round failed")
            await asyncio.sleep(self.every_s)

    async def sync_once(self) -> None:
        client = self.etcd()
        if client is None:
            return
        for track in self._tracks.values():
            await self._sync(client, track)
        await self._report(client)

    async def _sync(self, client: EtcdClient, track: Track) -> None:
        began = track.changes
        records = {}
        for value in (await client.get_prefix(track.kind.prefix)).values():
            record = Deployment.from_json(value)
            if record is not None:
                records[record.name] = record
        local = await track.kind.served()
        fresh = {n for n, number in track.changed.items() if number > began}
        # a record this node wrote while the read was under way is newer than what it read
        records.update({n: track.records[n] for n in fresh if n in track.records})
        track.records = records
        now = asyncio.get_running_loop().time()
        busy = set(track.pending) | set(track.applying) | fresh | {
            n for n, f in track.failures.items()
            if n in records and records[n].digest == f.digest and now < f.retry_at}
        for action in plan(records, local, busy):
            if track.changed.get(action.name, 0) > began or action.name in track.pending:
                continue  # changed here while this round applied others: the next decides
            if action.step is Step.PUBLISH:
                self.on_change(track.kind.label, action.name)
            else:
                track.applying[action.name] = action.step is Step.REMOVE
                try:
                    await self._apply(track, action, now)
                finally:
                    track.applying.pop(action.name, None)
        for name in [n for n, f in track.failures.items()
                     if n not in records or records[n].digest != f.digest]:
            del track.failures[name]  # the cluster moved on from what failed here

    async def _apply(self, track: Track, action: Action, now: float) -> None:
        record = action.record
        assert record is not None
        try:
            if action.step is Step.REMOVE:
                await track.kind.remove(action.name)
                log.info("removed %s %s: it was removed on %s", track.kind.label, action.name,
                         record.origin)
            else:
                await track.kind.install(record, self._sources(record))
            track.failures.pop(action.name, None)
        except NotYet as exc:
            self._fail(track, record, Failure(record.digest, exc.message, True,
                                              now + exc.retry_s))
        except FaasdError as exc:  # this node cannot serve that version: until it changes
            self._fail(track, record, Failure(record.digest, exc.message, False,
                                              now + FAILED_RETRY_S))

    def _fail(self, track: Track, record: Deployment, failure: Failure) -> None:
        before = track.failures.get(record.name)
        track.failures[record.name] = failure
        if before is not None and before.to_json() == failure.to_json():
            return  # said already: a waiting record is retried every round
        level = logging.INFO if failure.waiting else logging.ERROR
        log.log(level, "%s %s %s from %s here: %s", track.kind.label, record.name,
                record.digest[:12] or "(removal)",
                record.origin, ("waits: " if failure.waiting else "cannot apply: ")
                + failure.error)

    def _sources(self, record: Deployment) -> list[str]:
        """The deploying node first, then every other alive member (HTTP HOST:PORT)."""
        others = [m.http for m in self.members()
                  if m.alive and m.http and m.name not in (self.name, record.origin)]
        return list(dict.fromkeys([record.http, *(h for h in others if h)]))

    # ------------------------------------------------------------ reporting

    def status(self) -> dict[str, Any]:
        """This node's part of `/system/nodes`: per kind the names recorded cluster-wide, and
        under `failed` per kind what this node has not applied."""
        doc: dict[str, Any] = {
            label: sorted(n for n, r in track.records.items() if not r.removed)
            for label, track in self._tracks.items()}
        doc["failed"] = self._failed()
        return doc

    def _failed(self) -> dict[str, Any]:
        return {label: {n: f.to_json() for n, f in sorted(track.failures.items())}
                for label, track in self._tracks.items()}

    async def _report(self, client: EtcdClient) -> None:
        failed = self._failed()
        if failed == self._reported:
            return
        if any(failed.values()):
            await client.put(STATUS_PREFIX + self.name, json.dumps(failed, sort_keys=True))
        else:
            await client.delete(STATUS_PREFIX + self.name)
        self._reported = failed

    async def annotate(self, doc: dict[str, Any]) -> dict[str, Any]:
        """`/system/nodes` with each node's `replication`: what is recorded for the cluster
        and what that node has not applied."""
        client = self.etcd()
        reports: dict[str, Any] = {}
        if client is not None:
            # Bounded: a node cut off from etcd's quorum still answers at once (without the
            # other nodes' reports), not after every endpoint's timeout in turn.
            with contextlib.suppress(EtcdError, TimeoutError):
                recorded = await asyncio.wait_for(client.get_prefix(STATUS_PREFIX),
                                                  ANNOTATE_TIMEOUT_S)
                for key, value in recorded.items():
                    with contextlib.suppress(ValueError):
                        reports[key.removeprefix(STATUS_PREFIX)] = json.loads(value)
        mine = self.status()
        none: dict[str, Any] = {label: {} for label in self._tracks}
        for node in doc["nodes"]:
            report = reports.get(node["name"])
            failed = mine["failed"] if node["name"] == self.name else {
                **none, **(report if isinstance(report, dict) else {})}
            node["replication"] = {**mine, "failed": failed}
        if client is None:
            doc["replication"] = "off: no etcd known (the cluster has no voter)"
        return doc
