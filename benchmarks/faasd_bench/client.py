"""A one-connection HTTP client for latency series: keep-alive, no pooling, no retries.

`http.client` keeps the client's own cost small and steady (one syscall per send, one read
per answer); the time measured is from the first byte sent to the last byte read.
"""

from __future__ import annotations

import http.client
import socket
import time
from dataclasses import dataclass

from faasd_bench.v2 import HEADER_LENGTH, Request


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    elapsed_s: float

    @property
    def header_length(self) -> int | None:
        value = self.headers.get(HEADER_LENGTH.lower())
        return int(value) if value is not None else None


class Client:
    """POSTs to one host:port over one kept-alive connection (reconnects if the server closed)."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
            connection.connect()
            # As wrk and aiohttp's client do: a body's last partial segment must not wait for
            # the server's delayed ACK (Nagle), or the client adds up to 40 ms of its own.
            assert connection.sock is not None
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
        return self._connection

    def post(self, path: str, request: Request) -> Answer:
        connection = self._connect()
        started = time.perf_counter()
        try:
            connection.request("POST", path, body=request.body, headers=dict(request.headers))
            response = connection.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError):
            self.close()
            raise
        elapsed_s = time.perf_counter() - started
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.will_close:
            self.close()
        return Answer(response.status, body, headers, elapsed_s)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
