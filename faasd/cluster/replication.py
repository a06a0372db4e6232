"""Functions deployed on any node are deployed on every node; a node that joins catches up.

The choice, as a user of Nomad or OpenFaaS would expect it: etcd, which the cluster already
runs for its election, is the source of truth for *what* is deployed (`deployments.py`: one
small record per function, a content digest, never the files); the files travel between
daemons over their own HTTP API, pulled by each node from one that has them:

- a deploy or removal through any node's API (or its `--functions` directory) is applied
  there first, with every local check, then recorded in etcd (`on_change`);
- every node reads the records every `every_s` and applies the difference (`plan`): it
  fetches `GET /system/function/{name}/archive` from the deploying node, else from any other
  member that serves the same digest (the deploying node may have died mid-pull), checks the
  unpacked files against the recorded digest, and deploys them through the same
  `Catalog.deploy` as a local deploy (validation, throwaway load, atomic switch); a node
  started later does the same for everything recorded, which is its catch-up;
- a digest mismatch is refused and logged, and retried (another node, a later round); a
  version that cannot be deployed here (its model does not load) is not retried until the
  record changes, and is reported: in etcd under `faasd/replication/<node>`, so that
  `GET /system/nodes` on any node shows it in that node's `replication` entry.

Node-to-node requests carry the cluster's own admin token (`faasd.auth.tokens.cluster_token`,
derived from the gossip key) once API tokens are in use. Without etcd (workers only, no
voter) nothing is replicated and `replication` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from faasd.archive import tree_digest, unpack
from faasd.catalog import Catalog
from faasd.cluster.deployments import PREFIX, STATUS_PREFIX, Action, Deployment, Step, plan
from faasd.cluster.errors import EtcdError
from faasd.cluster.etcd_client import EtcdClient
from faasd.cluster.members import Member
from faasd.errors import FaasdError
from faasd.functions.spec import FunctionVersion

log = logging.getLogger("faasd.cluster")

DIGEST_HEADER = "X-Faasd-Digest"


class PullFailed(Exception):
    """No member served the recorded digest (the message says what each one answered)."""


@dataclass
class Failure:
    digest: str
    error: str


@dataclass
class Replicator:
    """`etcd()` is the cluster's etcd client once known (None before: nothing to do);
    `members()` the gossip's members; `http` this node's HTTP HOST:PORT; `token` the
    cluster token sent on pulls (None: no API tokens to satisfy)."""

    name: str
    http: str
    catalog: Catalog
    etcd: Callable[[], EtcdClient | None]
    members: Callable[[], list[Member]]
    scratch: Path
    max_bytes: int
    token: str | None = None
    every_s: float = 0.5
    pull_timeout_s: float = 60.0
    failures: dict[str, Failure] = field(default_factory=dict)
    _records: dict[str, Deployment] = field(default_factory=dict)
    _pending: set[str] = field(default_factory=set)   # local changes not yet recorded
    _applying: set[str] = field(default_factory=set)  # changes this replicator is making
    _retry_at: dict[str, float] = field(default_factory=dict)
    _reported: dict[str, dict[str, str]] | None = None
    _task: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------ local changes

    def on_change(self, name: str, version: FunctionVersion | None) -> None:
        """The catalog's hook: a deploy or removal made here, by a user, is recorded."""
        if name in self._applying:
            return
        self._pending.add(name)
        task = asyncio.ensure_future(self._record(name, version))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, name: str, version: FunctionVersion | None) -> None:
        digest = "" if version is None else await asyncio.to_thread(
            tree_digest, version.directory)
        record = Deployment(name, digest, self.name, self.http)
        try:
            while True:  # until etcd takes it: a deploy must not be lost to a blip
                client = self.etcd()
                try:
                    if client is not None:
                        await client.put(PREFIX + name, record.to_json())
                        self._records[name] = record
                        self.failures.pop(name, None)
                        log.info("recorded %s of %s (%s) for the cluster",
                                 "the removal" if record.removed else "the deploy", name,
                                 digest[:12])
                        return
                except EtcdError as exc:
                    log.warning("cannot record %s in etcd yet: %s", name, exc.message)
                await asyncio.sleep(self.every_s)
        finally:
            self._pending.discard(name)

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
        raw = await client.get_prefix(PREFIX)
        records = {}
        for value in raw.values():
            record = Deployment.from_json(value)
            if record is not None:
                records[record.name] = record
        self._records = records
        local = await asyncio.to_thread(self._local_digests)
        now = asyncio.get_running_loop().time()
        busy = self._pending | self._applying | {
            n for n, f in self.failures.items()
            if n in records and records[n].digest == f.digest and now < self._retry_at.get(n, 0)}
        for action in plan(records, local, busy):
            if action.step is Step.PUBLISH:
                self.on_change(action.name, self.catalog.get(action.name)[0])
            else:
                self._applying.add(action.name)
                try:
                    await self._apply(action, now)
                finally:
                    self._applying.discard(action.name)
        for name in [n for n, f in self.failures.items()
                     if n not in records or records[n].digest != f.digest]:
            del self.failures[name]  # the cluster moved on from what failed here
        await self._report(client)

    def _local_digests(self) -> dict[str, str]:
        return {version.name: tree_digest(version.directory)
                for version, _ in self.catalog.list()}

    async def _apply(self, action: Action, now: float) -> None:
        record = action.record
        assert record is not None
        try:
            if action.step is Step.REMOVE:
                await self.catalog.remove(action.name)
                log.info("removed %s: it was removed on %s", action.name, record.origin)
            else:
                await self._pull_and_deploy(record)
            self.failures.pop(action.name, None)
        except PullFailed as exc:  # the files may reach a node later: retry soon
            self._fail(record, str(exc), now + 2.0)
        except FaasdError as exc:  # this node cannot serve that version: until it changes
            self._fail(record, exc.message, now + 300.0)

    def _fail(self, record: Deployment, error: str, retry_at: float) -> None:
        log.error("cannot apply %s %s from %s here: %s", record.name, record.digest[:12],
                  record.origin, error)
        self.failures[record.name] = Failure(record.digest, error)
        self._retry_at[record.name] = retry_at

    async def _pull_and_deploy(self, record: Deployment) -> None:
        workdir = self.scratch / f"pull-{uuid.uuid4().hex}"
        workdir.mkdir(parents=True)
        try:
            directory = await self._pull(record, workdir)
            deployed = await self.catalog.deploy(directory, record.name,
                                                 name_files_in_source=False)
            log.info("deployed %s v%d (%s) from %s", record.name, deployed.version.version,
                     record.digest[:12], record.origin)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    def _sources(self, record: Deployment) -> list[str]:
        """The deploying node first, then every other alive member (HTTP HOST:PORT)."""
        others = [m.http for m in self.members()
                  if m.alive and m.http and m.name not in (self.name, record.origin)]
        return list(dict.fromkeys([record.http, *(h for h in others if h)]))

    async def _pull(self, record: Deployment, workdir: Path) -> Path:
        answers = []
        for index, source in enumerate(self._sources(record)):
            try:
                data = await self._fetch(source, record)
            except (aiohttp.ClientError, TimeoutError, PullFailed) as exc:
                answers.append(f"{source}: {str(exc) or type(exc).__name__}")
                continue
            target = workdir / str(index)
            target.mkdir()
            directory = await asyncio.to_thread(unpack, data, target, self.max_bytes)
            got = await asyncio.to_thread(tree_digest, directory)
            if got != record.digest:
                log.warning("refused %s from %s: its files have digest %s, the cluster "
                            "recorded %s", record.name, source, got[:12], record.digest[:12])
                answers.append(f"{source}: digest mismatch ({got[:12]})")
                continue
            return directory
        raise PullFailed(f"no node served {record.name} {record.digest[:12]} ("
                         f"{'; '.join(answers) or 'no member known'})")

    async def _fetch(self, source: str, record: Deployment) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = f"http://{source}/system/function/{record.name}/archive"
        limit = aiohttp.ClientTimeout(total=self.pull_timeout_s, sock_connect=2.0)
        async with self._session.get(url, headers=headers, timeout=limit) as reply:
            if reply.status != 200:
                raise PullFailed(f"HTTP {reply.status} {(await reply.text())[:200]}")
            if reply.headers.get(DIGEST_HEADER) != record.digest:
                raise PullFailed(f"serves {reply.headers.get(DIGEST_HEADER, '?')[:12]}")
            data = bytearray()
            async for chunk in reply.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > self.max_bytes:
                    raise PullFailed(f"the archive is over {self.max_bytes} bytes")
            return bytes(data)

    # ------------------------------------------------------------ reporting

    def status(self) -> dict[str, Any]:
        """This node's part of `/system/nodes`."""
        return {"functions": sorted(n for n, r in self._records.items() if not r.removed),
                "failed": {n: {"digest": f.digest, "error": f.error}
                           for n, f in sorted(self.failures.items())}}

    async def _report(self, client: EtcdClient) -> None:
        failed = self.status()["failed"]
        if failed == self._reported:
            return
        if failed:
            await client.put(STATUS_PREFIX + self.name, json.dumps(failed, sort_keys=True))
        else:
            await client.delete(STATUS_PREFIX + self.name)
        self._reported = failed

    async def annotate(self, doc: dict[str, Any]) -> dict[str, Any]:
        """`/system/nodes` with each node's `replication`: the functions recorded for the
        cluster and those it failed to apply."""
        client = self.etcd()
        reports: dict[str, Any] = {}
        if client is not None:
            with contextlib.suppress(EtcdError):
                for key, value in (await client.get_prefix(STATUS_PREFIX)).items():
                    with contextlib.suppress(ValueError):
                        reports[key.removeprefix(STATUS_PREFIX)] = json.loads(value)
        functions = self.status()["functions"]
        for node in doc["nodes"]:
            failed = self.status()["failed"] if node["name"] == self.name else reports.get(
                node["name"], {})
            node["replication"] = {"functions": functions, "failed": failed}
        if client is None:
            doc["replication"] = "off: no etcd known (the cluster has no voter)"
        return doc
