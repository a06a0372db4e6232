"""etcd's v3 JSON gateway from aiohttp: leases, the election API, members, health.

No gRPC: every call is `POST /v3/...` with JSON, keys and values base64, int64s as JSON strings
(all verified on etcd 3.4). The client holds several endpoints and moves to the next one when
an endpoint cannot be reached (a candidate tied to one dead member would otherwise be stuck);
an answer with an HTTP error is an `EtcdError` carrying etcd's own message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from faasd.cluster.errors import EtcdError

_UNREACHABLE = (aiohttp.ClientConnectionError, TimeoutError)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


def prefix_end(prefix: str) -> str:
    """The `range_end` that makes a range cover exactly the keys starting with `prefix`
    (its last character incremented, as etcd's clients do)."""
    if not prefix:
        raise ValueError("an empty prefix would cover every key")
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class LeaderKey:
    """The election's current leader: who (its campaign value) and its term (the key's
    create_revision, which equals campaign's `leader.rev`)."""

    name: str
    term: int


@dataclass(frozen=True)
class Renewal:
    """A lease keepalive's answer: the TTL left (0: expired or unknown) and the raft term of
    the member that renewed it."""

    ttl_s: int
    raft_term: int


@dataclass(frozen=True)
class EtcdMember:
    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool


class EtcdClient:
    """`endpoints` are client URLs (http://HOST:2379); `timeout_s` bounds each plain call
    (campaign and observe block by design and take their own limits)."""

    def __init__(self, endpoints: Sequence[str], timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint URL")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the endpoint list, keeping the one in use first if it is still listed."""
        fresh = list(dict.fromkeys(e.rstrip("/") for e in endpoints))
        if not fresh:
            return
        in_use = self._endpoints[self._current]
        if in_use in fresh:
            fresh.remove(in_use)
            fresh.insert(0, in_use)
        self._endpoints, self._current = fresh, 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def post(self, path: str, body: dict[str, Any],
                   timeout_s: float | None = None) -> dict[str, Any]:
        """POST to the first endpoint that answers; `EtcdError` when none does."""
        limit = aiohttp.ClientTimeout(total=timeout_s if timeout_s is not None
                                      else self._timeout_s)
        failures = []
        for _ in range(len(self._endpoints)):
            url = self._endpoints[self._current] + path
            try:
                async with self._http().post(url, json=body, timeout=limit) as reply:
                    doc = await reply.json(content_type=None)
                    if reply.status >= 400 or "error" in doc:
                        raise EtcdError(f"etcd {path}: {_message(doc, reply.status)}",
                                        status_code=reply.status)
                    return dict(doc)
            except _UNREACHABLE as exc:
                failures.append(f"{url}: {str(exc) or type(exc).__name__}")
                self._current = (self._current + 1) % len(self._endpoints)
            except (aiohttp.ClientError, ValueError) as exc:  # not etcd's JSON: wrong URL?
                raise EtcdError(f"etcd {path} at {url}: {exc}; is this an etcd client "
                                "URL?") from None
        raise EtcdError(f"no etcd endpoint answered ({'; '.join(failures)}); check that the "
                        "voters' etcd members run (faasd nodes) or the --etcd URLs")

    async def health(self) -> bool:
        """GET /health on the endpoint in use: True once it serves with a raft leader."""
        url = self._endpoints[self._current] + "/health"
        try:
            async with self._http().get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                doc = await r.json(content_type=None)
        except (*_UNREACHABLE, ValueError):
            return False
        return str(doc.get("health")) == "true"

    # leases
    async def lease_grant(self, ttl_s: int) -> tuple[str, int]:
        """A new lease: its id and the TTL etcd granted (it may round a small TTL up)."""
        doc = await self.post("/v3/lease/grant", {"TTL": ttl_s})
        return str(doc["ID"]), int(doc["TTL"])

    async def lease_keepalive(self, lease_id: str, timeout_s: float | None = None) -> Renewal:
        """Renew the lease (see `Renewal`)."""
        doc = await self.post("/v3/lease/keepalive", {"ID": lease_id}, timeout_s)
        result = doc.get("result", {})
        return Renewal(int(result.get("TTL", 0)),
                       int(result.get("header", {}).get("raft_term", 0)))

    async def quorum_term(self, key: str, timeout_s: float | None = None) -> int:
        """The raft term, by a linearizable read of `key` (it needs a quorum: a member cut
        off from the others, even one that still believes it leads raft, cannot answer)."""
        doc = await self.post("/v3/kv/range", {"key": b64(key), "limit": 1}, timeout_s)
        return int(doc.get("header", {}).get("raft_term", 0))

    async def lease_revoke(self, lease_id: str) -> None:
        await self.post("/v3/lease/revoke", {"ID": lease_id})

    # keys
    async def put(self, key: str, value: str) -> int:
        """Set `key`; the store's revision after the write."""
        doc = await self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(doc.get("header", {}).get("revision", 0))

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` (non-empty) with its value."""
        doc = await self.post("/v3/kv/range",
                              {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in doc.get("kvs", [])}

    async def delete(self, key: str) -> None:
        await self.post("/v3/kv/deleterange", {"key": b64(key)})

    # election
    async def campaign(self, election: str, lease_id: str, value: str,
                       timeout_s: float = 3600.0) -> dict[str, Any]:
        """Block until this candidate leads `election`; the `leader` object (its `rev` is the
        term). The lease must be kept alive meanwhile."""
        doc = await self.post("/v3/election/campaign",
                              {"name": b64(election), "lease": lease_id, "value": b64(value)},
                              timeout_s)
        return dict(doc["leader"])

    async def leader(self, election: str) -> LeaderKey | None:
        """The current leader of `election`, or None while nobody leads."""
        try:
            doc = await self.post("/v3/election/leader", {"name": b64(election)})
        except EtcdError as exc:
            if "no leader" in exc.message:
                return None
            raise
        kv = doc.get("kv")
        if not kv:
            return None
        return LeaderKey(unb64(kv.get("value", "")), int(kv["create_revision"]))

    async def resign(self, leader: dict[str, Any]) -> None:
        await self.post("/v3/election/resign", {"leader": leader})

    async def observe(self, election: str) -> AsyncIterator[LeaderKey]:
        """Each new leader of `election` as etcd announces it (a resign alone is not
        announced); ends when the connection does."""
        url = self._endpoints[self._current] + "/v3/election/observe"
        limit = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s)
        async with self._http().post(url, json={"name": b64(election)}, timeout=limit) as r:
            if r.status >= 400:
                raise EtcdError(f"etcd observe: HTTP {r.status}")
            async for line in r.content:
                if not line.strip():
                    continue
                kv = json.loads(line).get("result", {}).get("kv")
                if kv:
                    yield LeaderKey(unb64(kv.get("value", "")), int(kv["create_revision"]))

    # members
    async def members(self) -> list[EtcdMember]:
        doc = await self.post("/v3/cluster/member/list", {})
        return [_member(m) for m in doc.get("members", [])]

    async def add_member(self, peer_urls: Sequence[str], learner: bool = True
                         ) -> tuple[EtcdMember, list[EtcdMember]]:
        """Add a member (a learner by default: it cannot stall writes); it and all members."""
        doc = await self.post("/v3/cluster/member/add",
                              {"peerURLs": list(peer_urls), "isLearner": learner})
        return _member(doc["member"]), [_member(m) for m in doc.get("members", [])]

    async def promote_member(self, member_id: str) -> None:
        await self.post("/v3/cluster/member/promote", {"ID": member_id})


def _member(raw: dict[str, Any]) -> EtcdMember:
    return EtcdMember(
        id=str(raw["ID"]),
        name=str(raw.get("name", "")),
        peer_urls=tuple(raw.get("peerURLs", ())),
        client_urls=tuple(raw.get("clientURLs", ())),
        learner=bool(raw.get("isLearner", False)),
    )


def _message(doc: Any, status: int) -> str:
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("error") or f"HTTP {status}")
    return f"HTTP {status}"
