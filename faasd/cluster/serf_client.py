"""A thin asyncio client of a Serf agent's RPC: moves bytes, the codec does the protocol.

`await SerfClient.connect(host, port, auth_key)` opens the connection, handshakes and (when a
key is given) authenticates; every call then waits for its own reply by `Seq`, so calls may
overlap. `stream()` yields member and user events until the connection closes. A lost
connection fails every waiting call with `ConnectionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from faasd.cluster.errors import SerfRpcError
from faasd.cluster.members import Member, member_from_wire
from faasd.cluster.serf_codec import Reply, SerfCodec

MEMBER_EVENTS = "member-join,member-failed,member-update,member-leave,member-reap"


class SerfClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._codec = SerfCodec()
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._streams: dict[int, asyncio.Queue[Reply | None]] = {}
        self._closed: BaseException | None = None
        self._pump = asyncio.ensure_future(self._read_replies())

    @classmethod
    async def connect(cls, host: str, port: int, auth_key: str | None = None,
                      timeout_s: float = 5.0) -> SerfClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        client = cls(reader, writer)
        try:
            await asyncio.wait_for(client._call_raw(*client._codec.handshake()), timeout_s)
            if auth_key is not None:
                await asyncio.wait_for(client.call("auth", {"AuthKey": auth_key}), timeout_s)
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (closed, lost, or out of step with the agent)."""
        return self._closed is not None

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._fail_all(ConnectionError("the serf RPC connection was closed"))

    async def call(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; its reply body ({} for header-only replies) or `SerfRpcError`."""
        reply = await self._call_raw(*self._codec.request(command, body))
        if not reply.ok:
            raise SerfRpcError(command, reply.error)
        return reply.body or {}

    async def members(self) -> list[Member]:
        body = await self.call("members")
        return [member_from_wire(m) for m in body.get("Members", [])]

    async def set_tags(self, tags: dict[str, str], delete: list[str] | None = None) -> None:
        """Merge `tags` into the agent's tags (and drop `delete`)."""
        await self.call("tags", {"Tags": tags, "DeleteTags": delete or []})

    async def join(self, addresses: list[str], replay: bool = False) -> int:
        """Join the agents at HOST:PORT `addresses`; how many were reached."""
        body = await self.call("join", {"Existing": addresses, "Replay": replay})
        return int(body.get("Num", 0))

    async def event(self, name: str, payload: bytes, coalesce: bool = False) -> None:
        """A user event (Serf caps name + payload at 512 bytes after encoding: a hint only)."""
        await self.call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    async def leave(self) -> None:
        """Leave gracefully (others see `left`); the agent exits once it returns."""
        await self.call("leave")

    async def stream(self, types: str = MEMBER_EVENTS) -> AsyncIterator[dict[str, Any]]:
        """Yield event bodies of the given comma-separated types until the connection ends."""
        seq, data = self._codec.request("stream", {"Type": types})
        queue: asyncio.Queue[Reply | None] = asyncio.Queue()
        self._streams[seq] = queue
        try:
            ack = await self._call_raw(seq, data)
            if not ack.ok:
                raise SerfRpcError("stream", ack.error)
            while (event := await queue.get()) is not None:
                if event.error:
                    raise SerfRpcError("stream", event.error)
                yield event.body or {}
            raise ConnectionError("the serf RPC connection was closed")
        finally:
            self._streams.pop(seq, None)
            self._codec.end_stream(seq)

    async def _call_raw(self, seq: int, data: bytes) -> Reply:
        if self._closed is not None:
            raise ConnectionError(f"the serf RPC connection is closed: {self._closed}")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        self._writer.write(data)
        try:
            await self._writer.drain()
            return await future
        finally:
            self._waiting.pop(seq, None)

    async def _read_replies(self) -> None:
        try:
            while data := await self._reader.read(65536):
                for reply in self._codec.feed(data):
                    self._deliver(reply)
            self._fail_all(ConnectionError("the serf agent closed the RPC connection"))
        except (OSError, ValueError) as exc:  # ValueError: SerfProtocolError, msgpack limits
            self._fail_all(exc)

    def _deliver(self, reply: Reply) -> None:
        if reply.event:
            queue = self._streams.get(reply.seq)
            if queue is not None:
                queue.put_nowait(reply)
            return
        future = self._waiting.get(reply.seq)
        if future is not None and not future.done():
            future.set_result(reply)

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(str(exc)))
        for queue in self._streams.values():
            queue.put_nowait(None)
