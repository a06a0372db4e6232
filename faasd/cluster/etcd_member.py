"""A voter's own etcd member, k3s-style: its command line (pure) and how it joins.

The first voter starts a new etcd cluster with a fresh `--initial-cluster-token` (member ids
derive from peer URLs and this token, so two test clusters on the same addresses never
cross-join). A voter that finds a running cluster (an `etcd` tag in the gossip) adds itself
through `/v3/cluster/member/add` as a *learner*, which cannot stall writes while it is not yet
running (a plain add to a 1-member cluster blocks every write until the new member is up),
starts with `--initial-cluster-state existing`, and once it has caught up promotes itself to
a voting member. A member whose data directory already holds state restarts from it.

etcd 3.4 specifics: `--logger=zap` (its default logger is deprecated and noisy); no
`--unsafe-no-fsync`, so tests put the data directory on tmpfs. Heartbeat 100 ms (etcd's
default) and election timeout 500 ms (default 1000 ms): when a node dies with etcd's raft
leadership, etcd elects a new raft leader sooner, and only then renews every lease, so this
timeout adds straight to faasd's failover (median 4.9 s with 1000 ms, 3.3 s with 500 ms in
`benchmarks/cluster_chaos.py` on a loaded 2-core machine). A spurious raft election on a
busy host costs nothing to faasd: leases are only extended by it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from faasd.cluster.errors import EtcdError
from faasd.cluster.etcd_client import EtcdClient
from faasd.cluster.supervisor import Supervisor, find_engine

log = logging.getLogger("faasd.cluster")

CLIENT_PORT = 2379
PEER_PORT = 2380


@dataclass(frozen=True)
class EtcdSettings:
    name: str
    host: str
    data_dir: Path
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    heartbeat_ms: int = 100
    election_timeout_ms: int = 500

    @property
    def client_url(self) -> str:
        return f"http://{_host(self.host)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_host(self.host)}:{self.peer_port}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def etcd_argv(
    etcd: str,
    settings: EtcdSettings,
    initial_cluster: Mapping[str, str] | None,
    state: str,
    token: str,
) -> list[str]:
    """The `etcd` command line. `initial_cluster` maps member names to peer URLs (None when
    the data directory already holds the member); `state` is `new` or `existing`."""
    argv = [
        etcd,
        f"--name={settings.name}",
        f"--data-dir={settings.data_dir}",
        f"--listen-client-urls={settings.client_url}",
        f"--advertise-client-urls={settings.client_url}",
        f"--listen-peer-urls={settings.peer_url}",
        f"--initial-advertise-peer-urls={settings.peer_url}",
        f"--heartbeat-interval={settings.heartbeat_ms}",
        f"--election-timeout={settings.election_timeout_ms}",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=warn",
    ]
    if initial_cluster is not None:
        members = ",".join(f"{name}={url}" for name, url in initial_cluster.items())
        argv += [f"--initial-cluster={members}", f"--initial-cluster-state={state}",
                 f"--initial-cluster-token={token}"]
    return argv


def has_data(data_dir: Path) -> bool:
    return (data_dir / "member").is_dir()


class EtcdMember:
    """Start (new, joining, or from existing data) → healthy (a voter when it joined);
    `stop` sends SIGTERM."""

    def __init__(self, settings: EtcdSettings, log_path: Path) -> None:
        self.settings = settings
        self._etcd = find_engine("etcd")
        self._log_path = log_path
        self.local = EtcdClient([settings.client_url])
        self.supervisor: Supervisor | None = None

    async def _healthy(self) -> None:
        while not await self.local.health():
            await asyncio.sleep(0.05)

    def _supervise(self, initial: Mapping[str, str] | None, state: str) -> Supervisor:
        argv = etcd_argv(self._etcd, self.settings, initial, state,
                         token=f"faasd-{uuid.uuid4()}")
        self.supervisor = Supervisor("etcd", argv, self._log_path, ready=self._healthy)
        return self.supervisor

    async def start(self, cluster_urls: Sequence[str], timeout_s: float = 60.0) -> None:
        """Start from existing data, else join the cluster at `cluster_urls`, else (none
        given) start a new one-member cluster."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if has_data(self.settings.data_dir):
            log.info("etcd: restarting member %s from %s", self.settings.name,
                     self.settings.data_dir)
            await self._supervise(None, "existing").start(timeout_s)
        elif not cluster_urls:
            log.info("etcd: starting a new cluster at %s", self.settings.client_url)
            await self._supervise({self.settings.name: self.settings.peer_url}, "new"
                                  ).start(timeout_s)
        else:
            await self._join(list(cluster_urls), timeout_s)

    async def _join(self, urls: list[str], timeout_s: float) -> None:
        remote = EtcdClient(urls)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            member, members = await _retry(
                lambda: remote.add_member([self.settings.peer_url], learner=True), deadline,
                what=f"add this node to the etcd cluster at {', '.join(urls)}")
            initial = {m.name or self.settings.name: m.peer_urls[0]
                       for m in members if m.peer_urls}
            initial[self.settings.name] = self.settings.peer_url
            log.info("etcd: joining as learner %s with %s", member.id, initial)
            await self._supervise(initial, "existing").start(max(1.0, deadline - loop.time()))
            await _retry(lambda: remote.promote_member(member.id), deadline,
                         what=f"promote etcd learner {member.id}")
            log.info("etcd: member %s is a voter", self.settings.name)
        finally:
            await remote.close()

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop(grace_s=10.0)
        await self.local.close()


T = TypeVar("T")


async def _retry(call: Callable[[], Awaitable[T]], deadline: float, what: str) -> T:
    """Retry `call()` (learner limits, a learner not yet in sync) until `deadline`."""
    loop = asyncio.get_running_loop()
    last = ""
    while True:
        try:
            return await call()
        except EtcdError as exc:
            if loop.time() > deadline:
                raise EtcdError(f"cannot {what}: {exc.message}") from None
            if exc.message != last:
                log.info("etcd: %s: %s; retrying", what, exc.message)
            last = exc.message
            await asyncio.sleep(0.3)
