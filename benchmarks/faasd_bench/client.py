"""One-connection HTTP/1.1 clients for latency series: keep-alive, no pooling, no retries.

`Client` is the harness's ruler. Like wrk, it costs the measured call almost nothing of its
own: the request's head is built once per (path, headers, body length), the head and the body
leave in one scatter-gather `sendmsg` (the body is not copied in user space), and the answer's
head is read with a few byte searches. The time measured runs from that first send to the
last byte of the answer.

`StdlibClient` is the same call through `http.client`, as a Python user of the standard
library would make it. It costs the call about a quarter of a millisecond of its own on a
600 KB body: `request()` concatenates head and body into one new bytes object before it sends,
and `getresponse()` parses the head with the `email` package. `warm_overhead.py` reports it
beside the ruler so that the difference stays visible.
"""

from __future__ import annotations

import http.client
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from faasd_bench.v2 import HEADER_LENGTH, Request, decode_response

_RECV_BYTES = 256 * 1024
_MAX_HEAD_BYTES = 64 * 1024


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

    def ok(self, what: str) -> Answer:
        """This answer, if it is a 200; RuntimeError naming `what` and the body if not."""
        if self.status != 200:
            raise RuntimeError(f"{what}: HTTP {self.status}: {self.body[:300]!r}")
        return self

    def check_outputs(self, expected: Mapping[str, np.ndarray], what: str) -> None:
        """RuntimeError unless this is a 200 V2 answer whose outputs match `expected`."""
        got = decode_response(self.ok(what).body, self.header_length)
        for name, array in expected.items():
            if name not in got or not np.allclose(got[name], array, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"{what}: output {name!r} differs from the in-process run")


def request_head(host: str, path: str, headers: Mapping[str, str], body_bytes: int) -> bytes:
    """The request line and headers of a POST with a body of `body_bytes`."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {body_bytes}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased) of a response head, without its blank line.

    Raises ValueError when it is not an HTTP/1.x status line followed by `name: value` lines.
    """
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP/1.x response: {status_line!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return int(rest[:3]), headers


class _Reader:
    """Buffered reads from one socket: heads up to a blank line, bodies by length or chunks."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _fill(self) -> None:
        data = self._sock.recv(_RECV_BYTES)
        if not data:
            raise ConnectionError("the server closed the connection mid-answer")
        self._buffer += data

    def head(self) -> bytes:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise ValueError("response head larger than 64 KiB")
            self._fill()
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        return head

    def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            self._fill()
        data = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return data

    def until_close(self) -> bytes:
        while data := self._sock.recv(_RECV_BYTES):
            self._buffer += data
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def chunked(self) -> bytes:
        parts = []
        while size := int(self.line().split(b";")[0], 16):
            parts.append(self.exactly(size))
            self.exactly(2)  # the CRLF after each chunk
        while self.line():  # trailers, up to the blank line
            pass
        return b"".join(parts)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this idle connection (an end of file waits in it)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False  # nothing to read: still open
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True  # reset


class Client:
    """POSTs to one host:port over one kept-alive connection (reconnects if the server closed)."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self._reader: _Reader | None = None
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...], int], bytes] = {}

    def _connect(self) -> tuple[socket.socket, _Reader]:
        if self._sock is not None and _closed_by_server(self._sock):
            self.close()  # an idle keep-alive connection the server let go (uvicorn: after 5 s)
        if self._sock is None or self._reader is None:
            sock = socket.create_connection((self._host, self._port), self._timeout_s)
            # As wrk does: a body's last partial segment must not wait for the server's delayed
            # ACK (Nagle), or the client adds up to 40 ms of its own.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._reader = sock, _Reader(sock)
        return self._sock, self._reader

    def _head(self, path: str, request: Request) -> bytes:
        key = (path, tuple(request.headers.items()), len(request.body))
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = request_head(
                f"{self._host}:{self._port}", path, request.headers, len(request.body)
            )
        return head

    def post(self, path: str, request: Request) -> Answer:
        sock, reader = self._connect()
        pending = [memoryview(self._head(path, request)), memoryview(request.body)]
        try:
            started = time.perf_counter()
            while pending:
                sent = sock.sendmsg(pending)
                while pending and sent >= len(pending[0]):
                    sent -= len(pending[0])
                    pending.pop(0)
                if pending:
                    pending[0] = pending[0][sent:]
            status, headers = parse_head(reader.head())
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = reader.chunked()
            elif "content-length" in headers:
                body = reader.exactly(int(headers["content-length"]))
            else:  # neither: the body runs to the end of the connection
                body = reader.until_close()
                headers["connection"] = "close"
            elapsed_s = time.perf_counter() - started
        except (OSError, ValueError):
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, body, headers, elapsed_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._reader = None, None


class StdlibClient:
    """The same calls through `http.client` (see the module docstring for what that costs)."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
            connection.connect()
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
