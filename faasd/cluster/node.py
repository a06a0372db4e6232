"""This node's place in the cluster, as the daemon uses it: `SoloCluster` or `ClusterNode`.

Both answer the same questions (`Cluster`): who am I, who leads at which term, am I the
leader, which term may a command carry (`fence`), and the members as `GET /system/nodes`
shows them. `SoloCluster` (no `cluster_addr`) starts nothing and leads at term 1.

`ClusterNode.start()` in order: the Serf agent (joined to `join` peers); on a voter without
`--etcd`, its own etcd member (a new cluster when no voter is found in the gossip, else it
joins through a voter's `etcd` tag), then it tags itself with its etcd URL; then the elector
(voters campaign, everyone watches). etcd endpoints are refreshed from the voters' tags every
`refresh_s`. `stop()` reverses it: resign, stop etcd, leave the gossip (last).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from faasd.clock import Clock
from faasd.cluster.elector import Elector
from faasd.cluster.errors import ClusterError, EtcdError
from faasd.cluster.etcd_client import EtcdClient
from faasd.cluster.etcd_member import EtcdMember, EtcdSettings
from faasd.cluster.leadership import Fence, Leader
from faasd.cluster.members import TAG_ETCD, TAG_HTTP, TAG_ROLE, TAG_VCPU, Member, Role, Status
from faasd.cluster.serf_agent import SerfAgent, SerfSettings
from faasd.cluster.settings import ClusterSettings
from faasd.cluster.supervisor import find_engine
from faasd.cluster.view import nodes_doc

log = logging.getLogger("faasd.cluster")

REJOIN_EVERY_S = 5.0


class Cluster(Protocol):
    name: str
    fence: Fence

    def leader(self) -> Leader:
        """The leader and term as this node sees them now (name None: no leader known)."""
        ...

    def is_leader(self) -> bool:
        """True only while this node's lease is surely alive (see `leadership.py`)."""
        ...

    def members(self) -> list[Member]:
        """The members as last read from the gossip (refreshed every second)."""
        ...

    def on_leader_change(self, callback: Callable[[Leader], None]) -> None:
        """Call `callback(leader)` on every change of leader or term seen here (from the
        event loop; it must not block)."""
        ...

    async def nodes(self) -> dict[str, Any]: ...

    async def start(self, http_address: str) -> None:
        """Join (and start the engines) once the HTTP API listens at `http_address`."""
        ...

    async def stop(self) -> None: ...


def http_address(cluster: Cluster, node: str | None) -> str | None:
    """The HTTP address (HOST:PORT) of `node` if the gossip has it alive, else None."""
    return next((m.http for m in cluster.members()
                 if m.name == node and m.alive and m.http), None)


class SoloCluster:
    """One node alone: its own leader at term 1, nothing started."""

    def __init__(self, name: str, vcpu: int) -> None:
        self.name = name
        self.fence = Fence()
        self.fence.see(1)
        self._vcpu = vcpu
        self._member = Member(name, "", Status.ALIVE, {TAG_ROLE: Role.VOTER.value})

    def leader(self) -> Leader:
        return Leader(self.name, 1)

    def is_leader(self) -> bool:
        return True

    def members(self) -> list[Member]:
        return [self._member]

    def on_leader_change(self, callback: Callable[[Leader], None]) -> None:
        return None  # never changes

    async def nodes(self) -> dict[str, Any]:
        return nodes_doc(self.name, [self._member], self.leader())

    async def start(self, http_address: str) -> None:
        self._member = Member(self.name, http_address, Status.ALIVE,
                              {TAG_ROLE: Role.VOTER.value, TAG_HTTP: http_address,
                               TAG_VCPU: str(self._vcpu)})

    async def stop(self) -> None:
        return None


class ClusterNode:
    def __init__(
        self,
        settings: ClusterSettings,
        vcpu: int,
        work_dir: Path,
        clock: Clock,
        *,
        ttl_s: int = 2,
        refresh_s: float = 1.0,
    ) -> None:
        find_engine("serf")  # a missing engine is reported before anything starts
        if settings.voter and not settings.etcd:
            find_engine("etcd")
        self.settings = settings
        self.name = settings.node
        self.fence = Fence()
        self._clock = clock
        self._ttl_s = ttl_s
        self._refresh_s = refresh_s
        self._work_dir = work_dir
        self._vcpu = vcpu
        self._serf: SerfAgent | None = None
        self.etcd: EtcdMember | None = None
        self.elector: Elector | None = None
        self._members: list[Member] = []
        self._refresher: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[Leader], None]] = []
        self._rejoining: asyncio.Task[None] | None = None

    @property
    def serf(self) -> SerfAgent:
        if self._serf is None:
            raise ClusterError("the cluster is not started")
        return self._serf

    async def start(self, http_address: str) -> None:
        settings = self.settings
        role = Role.VOTER if settings.voter else Role.WORKER
        self._serf = SerfAgent(
            SerfSettings(
                node=settings.node,
                bind=(settings.host, settings.port),
                rpc=settings.rpc,
                tags={TAG_ROLE: role.value, TAG_HTTP: http_address, TAG_VCPU: str(self._vcpu)},
                gossip_key=settings.gossip_key,
                profile="local" if settings.loopback else "lan",
            ),
            self._work_dir,
            list(settings.join),
        )
        await self.serf.start()
        members = await self.serf.members()
        endpoints = list(self.settings.etcd)
        if self.settings.voter and not self.settings.etcd:
            found = _etcd_urls(members, exclude=self.name)
            self.etcd = EtcdMember(
                EtcdSettings(name=self.name, host=self.settings.host,
                             data_dir=self._work_dir / "etcd"),
                self._work_dir / "etcd.log",
            )
            await self.etcd.start(found)
            own = self.etcd.settings.client_url
            await self.serf.set_tags({TAG_ETCD: own})
            endpoints = [own, *found]
        self._members = members
        if endpoints:
            self._start_elector(endpoints)
        self._refresher = asyncio.ensure_future(self._refresh())

    def _start_elector(self, endpoints: list[str]) -> None:
        self.elector = Elector(EtcdClient(endpoints), self.name, self._clock,
                               campaign=self.settings.voter, ttl_s=self._ttl_s,
                               on_change=self._leader_changed)
        self.elector.start()

    def _leader_changed(self, leader: Leader) -> None:
        self.fence.see(leader.term)
        for callback in self._callbacks:
            try:
                callback(leader)
            except Exception:
                log.exception("a leader-change callback failed")

    def on_leader_change(self, callback: Callable[[Leader], None]) -> None:
        self._callbacks.append(callback)

    def members(self) -> list[Member]:
        return list(self._members)

    async def _refresh(self) -> None:
        """Keep the member list and the etcd endpoints (from the voters' tags) fresh; a
        node that finds itself alone tries to rejoin the peers it knows (in the
        background, at most every `REJOIN_EVERY_S`)."""
        last_rejoin = float("-inf")
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._members = await self.serf.members()
            except (OSError, ClusterError) as exc:  # the agent is being restarted
                log.debug("serf members: %s", exc)
                continue
            except Exception:  # a bug must not stop the refresh for good
                log.exception("reading the members failed")
                continue
            alone = not any(m.alive and m.name != self.name for m in self._members)
            now = self._clock.now()
            if (alone and (self._rejoining is None or self._rejoining.done())
                    and now - last_rejoin >= REJOIN_EVERY_S
                    and self.serf.rejoin_candidates()):
                last_rejoin = now
                self._rejoining = asyncio.ensure_future(self._rejoin())
            if self.settings.etcd:
                continue
            urls = _etcd_urls(self._members, exclude=None)
            if self.etcd is not None:
                urls = [self.etcd.settings.client_url, *urls]
            if not urls:
                continue
            if self.elector is None:
                self._start_elector(urls)
            else:
                self.elector.client.set_endpoints(urls)

    async def _rejoin(self) -> None:
        log.info("no other member alive; rejoining %s",
                 ", ".join(self.serf.rejoin_candidates()))
        try:
            await self.serf.rejoin()
        except (OSError, ClusterError) as exc:
            log.info("rejoin failed: %s", exc)

    def leader(self) -> Leader:
        return self.elector.leader() if self.elector is not None else Leader(None, 0)

    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader()

    def etcd_client(self) -> EtcdClient | None:
        """The client of the cluster's etcd (its endpoints kept fresh from the voters' tags);
        None until a voter is known."""
        return self.elector.client if self.elector is not None else None

    async def nodes(self) -> dict[str, Any]:
        """The members as the agent knows them; while the agent is being restarted, the
        last list it gave, with a `warning` saying so."""
        warning = None
        try:
            self._members = await self.serf.members()
        except (OSError, ClusterError) as exc:
            warning = f"the serf agent is not answering ({exc}); this is its last list"
            log.info("%s", warning)
        doc = nodes_doc(self.name, self._members, self.leader())
        if warning is not None:
            doc["warning"] = warning
        return doc

    async def stop(self) -> None:
        """Resign and stop campaigning, stop etcd, then leave the gossip."""
        for task in (self._refresher, self._rejoining):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.elector is not None:
            await self.elector.stop()
            await self.elector.client.close()
        if self.etcd is not None:
            with contextlib.suppress(EtcdError):
                await self.etcd.stop()
        if self._serf is not None:
            await self._serf.stop()


def _etcd_urls(members: list[Member], exclude: str | None) -> list[str]:
    return sorted(m.etcd_url for m in members
                  if m.alive and m.etcd_url and m.name != exclude)


def make_cluster(settings: ClusterSettings | None, name: str | None, vcpu: int,
                 work_dir: Path, clock: Clock) -> Cluster:
    """`SoloCluster` without settings; else a `ClusterNode` (`EngineMissing` if `serf`, or
    on a voter `etcd`, is not installed)."""
    if settings is None:
        return SoloCluster(name or socket.gethostname(), vcpu)
    return ClusterNode(settings, vcpu, work_dir, clock)
