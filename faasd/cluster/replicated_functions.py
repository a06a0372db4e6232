"""Functions as the replicator keeps them (`replication.py`): recorded by the content digest of
the deployed directory, their files pulled over HTTP.

A node pulls `GET /system/function/{name}/archive` from the deploying node, else from any
other member that serves the same digest (the deploying node may have died mid-pull), checks
the unpacked files against the recorded digest, and deploys them through the same
`Catalog.deploy` as a local deploy (validation, throwaway load, atomic switch). No node
serving the digest, or files whose digest differs, is `NotYet`: retried a little later, from
every source again. A removal the workflows refuse (one of them still uses the function) waits
for that workflow's removal to arrive.

Pulls carry the cluster's own admin token (`faasd.auth.tokens.cluster_token`, derived from the
gossip key) once API tokens are in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from faasd.archive import tree_digest, unpack
from faasd.catalog import Catalog
from faasd.cluster.deployments import Deployment
from faasd.cluster.replication import NotYet
from faasd.errors import Conflict, NotFound

log = logging.getLogger("faasd.cluster")

LABEL = "functions"
PREFIX = "faasd/functions/"
DIGEST_HEADER = "X-Faasd-Digest"
#: how soon a pull that no node answered with the recorded files is tried again
PULL_RETRY_S = 2.0


class PullFailed(NotYet):
    """No member served the recorded digest (the message says what each one answered)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, PULL_RETRY_S)


@dataclass
class FunctionKind:
    """`scratch` holds pulls while they are checked; `token` is sent on them (None: no API
    tokens to satisfy)."""

    catalog: Catalog
    scratch: Path
    max_bytes: int
    token: str | None = None
    pull_timeout_s: float = 60.0
    label: str = LABEL
    prefix: str = PREFIX
    _session: aiohttp.ClientSession | None = None

    async def served(self) -> dict[str, str]:
        return await asyncio.to_thread(lambda: {
            version.name: tree_digest(version.directory) for version, _ in self.catalog.list()})

    async def current(self, name: str) -> tuple[str, dict[str, Any] | None]:
        try:
            version, _ = self.catalog.get(name)
        except NotFound:
            return "", None
        return await asyncio.to_thread(tree_digest, version.directory), None

    async def remove(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            try:
                await self.catalog.remove(name)
            except Conflict as exc:  # its workflow's removal has not been applied here yet
                raise NotYet(exc.message) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def install(self, record: Deployment, sources: list[str]) -> None:
        workdir = self.scratch / f"pull-{uuid.uuid4().hex}"
        workdir.mkdir(parents=True)
        try:
            directory = await self._pull(record, sources, workdir)
            deployed = await self.catalog.deploy(directory, record.name,
                                                 name_files_in_source=False)
            log.info("deployed %s v%d (%s) from %s", record.name, deployed.version.version,
                     record.digest[:12], record.origin)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _pull(self, record: Deployment, sources: list[str], workdir: Path) -> Path:
        answers = []
        for index, source in enumerate(sources):
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
