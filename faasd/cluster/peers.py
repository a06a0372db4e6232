"""HTTP between daemons: one client session, the cluster's token, and what a failure means.

A request to another node fails in one of two ways that matter for "nothing lost": it never
reached the node (`PeerUnreachable`: connection refused, no route, the connect timed out), so
nothing ran there and the work can go elsewhere at once; or it was sent and no answer came
(`PeerLost`: the connection dropped, the answer timed out), so the work may have run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiohttp

from faasd.sandbox import framing

log = logging.getLogger("faasd.cluster")

MSGPACK = "application/msgpack"
#: Connecting to a live node on a LAN takes a millisecond; one that does not answer in this
#: long is treated as unreachable (nothing was sent).
CONNECT_TIMEOUT_S = 1.0


class PeerUnreachable(ConnectionError):
    """The request never reached the node: nothing ran there."""


class PeerLost(ConnectionError):
    """The request went out but no answer came back: it may have run."""


class Peers:
    def __init__(self, token: str | None) -> None:
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no connection limit per host: a batch's requests must not queue behind others
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0))
        return self._session

    async def post(self, address: str, path: str, body: bytes | Sequence[framing.Buffer],
                   timeout_s: float, method: str = "POST") -> tuple[int, bytes]:
        """Send `body` (bytes, or a frame's buffers) to `http://address/path` (POST, or
        `method`): (status, body)."""
        headers = {"Content-Type": MSGPACK}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        data = body if isinstance(body, bytes) else b"".join(bytes(b) for b in body)
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        url = f"http://{address}{path}"
        try:
            async with self._client().request(method, url, data=data, headers=headers,
                                              timeout=timeout) as reply:
                return reply.status, await reply.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise PeerUnreachable(f"{address} could not be reached: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PeerLost(f"{address} did not answer: {exc or type(exc).__name__}") from None

    async def alive(self, address: str, timeout_s: float) -> bool:
        """Whether the daemon at `address` answers its liveness probe within `timeout_s` (a
        stopped process keeps its sockets open, so only an answer tells it is running)."""
        try:
            async with self._client().get(f"http://{address}/v2/health/live",
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
