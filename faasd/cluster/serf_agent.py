"""The node's own `serf agent`: its command line and config (pure), and its supervision.

The agent gossips on the cluster address (`-bind`), answers RPC only on loopback with a
per-start `rpc_auth` token written to a 0600 config file (this serf has no `-rpc-auth` flag),
encrypts gossip with `-encrypt` when a key is given, and carries the node's tags. A restarted
agent starts with an empty member list, so the supervisor's readiness step joins again: the
configured peers and every member the node last saw alive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

from faasd.cluster.errors import ClusterError, SerfRpcError
from faasd.cluster.members import Member
from faasd.cluster.serf_client import SerfClient
from faasd.cluster.supervisor import Supervisor, find_engine

log = logging.getLogger("faasd.cluster")

@dataclass(frozen=True)
class SerfSettings:
    """`bind` and `rpc` are (HOST, PORT); `profile` is Serf's timing profile (`local` detects
    a dead node in ~5 s, `lan` in ~7 s)."""

    node: str
    bind: tuple[str, int]
    rpc: tuple[str, int]
    tags: dict[str, str] = field(default_factory=dict)
    gossip_key: str | None = None
    profile: str = "lan"


def agent_argv(serf: str, settings: SerfSettings, config_file: Path,
               snapshot: Path) -> list[str]:
    """The `serf agent` command line (the RPC token is in `config_file`, not here). The
    snapshot keeps the members seen; with `-rejoin` a restarted node (faasd restarted
    without --join, e.g. the first node) rejoins them by itself."""
    argv = [
        serf, "agent",
        f"-node={settings.node}",
        f"-bind={_hostport(settings.bind)}",
        f"-rpc-addr={_hostport(settings.rpc)}",
        f"-profile={settings.profile}",
        f"-config-file={config_file}",
        f"-snapshot={snapshot}",
        "-rejoin",
        "-log-level=warn",
    ]
    if settings.gossip_key is not None:
        argv.append(f"-encrypt={settings.gossip_key}")
    argv += [f"-tag={key}={value}" for key, value in sorted(settings.tags.items())]
    return argv


def agent_config(rpc_token: str) -> dict[str, object]:
    return {"rpc_auth": rpc_token}


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SerfAgent:
    """Start → the agent answers RPC and has joined `peers` (if any); `stop` leaves."""

    def __init__(self, settings: SerfSettings, work_dir: Path, peers: list[str]) -> None:
        self.settings = settings
        self._peers = list(peers)
        self._token = secrets.token_urlsafe(24)
        self._work_dir = work_dir
        self._config_file = work_dir / "serf.json"
        self._client: SerfClient | None = None
        self._peers_file = work_dir / "peers.json"
        self._known = _read_peers(self._peers_file)  # name -> gossip address, seen alive
        self.supervisor = Supervisor(
            "serf agent",
            agent_argv(find_engine("serf"), settings, self._config_file,
                       work_dir / "serf.snapshot"),
            work_dir / "serf.log",
            ready=self._on_ready,
        )
        self._joined_once = False
        self._reconnecting = asyncio.Lock()

    async def start(self, join_timeout_s: float = 30.0) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(agent_config(self._token), out)
        await self.supervisor.start(ready_timeout_s=join_timeout_s)

    async def _on_ready(self) -> None:
        """Connect (the agent may take a moment to listen), then join peers."""
        await self._connect()
        peers = self.rejoin_candidates()
        if peers:  # the --join peers must answer at the first start; known ones may be gone
            await self._join(peers, required=bool(self._peers) and not self._joined_once)
        self._joined_once = True

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while True:
            try:
                client = await SerfClient.connect(*self.settings.rpc, auth_key=self._token)
                break
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        if self._client is not None:
            await self._client.close()
        self._client = client

    async def _live_client(self) -> SerfClient:
        """The RPC client; connected anew when its connection was lost while the agent kept
        running (a reply it could not parse), so that one bad reply cannot freeze the
        member list. While the agent is down (being restarted) this raises."""
        async with self._reconnecting:
            if self.client.closed and self.supervisor.running:
                log.warning("the serf RPC connection was lost while the agent runs; "
                            "reconnecting")
                await self._connect()
        return self.client

    async def _join(self, peers: list[str], required: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        while True:
            try:
                count = await self.client.join(list(dict.fromkeys(peers)))
            except SerfRpcError as exc:
                count, error = 0, exc.error
            else:
                error = "no peer answered"
            if count > 0:
                log.info("serf joined %d of %s", count, ", ".join(peers))
                return
            if not required or loop.time() > deadline:
                if required:
                    raise ClusterError(f"cannot join the cluster at {', '.join(peers)}: "
                                       f"{error}; check that faasd runs there with "
                                       "--cluster-addr and the same gossip key")
                log.warning("serf could not rejoin %s: %s", ", ".join(peers), error)
                return
            await asyncio.sleep(0.5)

    @property
    def client(self) -> SerfClient:
        if self._client is None:
            raise ClusterError("the serf agent is not started")
        return self._client

    async def members(self) -> list[Member]:
        """The agent's member list; remembers the alive ones (also in `peers.json`, for the
        next start of faasd) to rejoin after a restart."""
        found = await (await self._live_client()).members()
        known = dict(self._known)
        known.update((m.name, m.address) for m in found if m.alive)
        if known != self._known:
            self._known = known
            tmp = self._peers_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(self._peers_file)
        return found

    def rejoin_candidates(self) -> list[str]:
        """The configured peers, then every other member this node has seen alive."""
        seen = [a for n, a in sorted(self._known.items()) if n != self.settings.node]
        return list(dict.fromkeys(self._peers + seen))

    async def rejoin(self) -> None:
        """One attempt to join the candidates (a node that finds itself alone)."""
        peers = self.rejoin_candidates()
        if peers:
            await self._join(peers, required=False)

    async def set_tags(self, tags: dict[str, str]) -> None:
        await self.client.set_tags(tags)

    async def stop(self) -> None:
        """Leave gracefully (others see `left`), else SIGINT (also a graceful leave)."""
        async def leave() -> None:
            await self.client.leave()

        await self.supervisor.stop(graceful=leave if self._client else None,
                                   sig=signal.SIGINT, grace_s=5.0)
        if self._client is not None:
            await self._client.close()
            self._client = None


def _read_peers(path: Path) -> dict[str, str]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {str(k): str(v) for k, v in loaded.items()}
