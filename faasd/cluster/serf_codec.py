"""Serf's agent RPC as a pure codec: requests to bytes, bytes to replies (no sockets).

The protocol (verified against the Debian `serf` agent, which reports 0.8.2-dev): a stream of
concatenated msgpack objects without length prefixes. A request is a header map
`{"Command": str, "Seq": int}` followed by a body map when the command takes one. A reply is a
header `{"Seq": int, "Error": str}` (empty `Error` = OK) followed by a body **only** for the
commands in `BODY_REPLIES`. After an error it depends on where the error arose: one the RPC
layer raises before the command runs ("Authentication required") comes alone, while one the
command itself returns comes with the command's body: a `join` none of whose peers answered
replies `{"Error": "1 error occurred: ... connection refused", "Seq": n}` then `{"Num": 0}`.
So after an error reply to a `BODY_REPLIES` command, the next object is taken as its body when
it is not a header (a header always holds `Seq` and `Error`; no body does). A `stream` request
is acknowledged by a header alone; each event that follows is a header with the stream's `Seq`
plus a body. Since the framing cannot tell a header from a body, the codec tracks which
command each `Seq` belongs to; a reply for a `Seq` it never sent is a `SerfProtocolError` (the
connection is out of step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

#: Commands whose successful reply carries a body after the header.
BODY_REPLIES = frozenset({"members", "members-filtered", "join", "stats", "get-coordinate",
                          "install-key", "use-key", "remove-key", "list-keys"})

#: The RPC protocol version the handshake asks for.
RPC_VERSION = 1

#: Largest single msgpack object the decoder accepts (a members list of ~10,000 nodes).
MAX_OBJECT_BYTES = 16 * 1024 * 1024


class SerfProtocolError(ValueError):
    """The agent sent something the protocol does not allow here (a bug, or the wrong peer)."""


@dataclass(frozen=True)
class Reply:
    """One decoded reply. `event` is True for the events of a stream (after its ack)."""

    seq: int
    command: str
    error: str
    body: dict[str, Any] | None
    event: bool = False

    @property
    def ok(self) -> bool:
        return not self.error


class SerfCodec:
    """Encodes requests with increasing `Seq` and decodes replies fed to it in any chunks."""

    def __init__(self) -> None:
        self._next_seq = 0
        self._pending: dict[int, str] = {}
        self._streams: set[int] = set()
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_OBJECT_BYTES)
        self._awaiting_body: tuple[int, str, bool] | None = None
        self._optional_body = False  # an error reply's body may come next

    def request(self, command: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The bytes of one request and the `Seq` its reply will carry."""
        seq = self._next_seq
        self._next_seq += 1
        self._pending[seq] = command
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        return seq, data

    def handshake(self) -> tuple[int, bytes]:
        return self.request("handshake", {"Version": RPC_VERSION})

    def end_stream(self, seq: int) -> None:
        """Forget stream `seq` (after a `stop` for it): later events for it are errors."""
        self._streams.discard(seq)

    def feed(self, data: bytes) -> list[Reply]:
        """The replies completed by `data` (possibly none: a reply may span many chunks)."""
        self._unpacker.feed(data)
        replies = []
        for obj in self._unpacker:
            reply = self._take(obj)
            if reply is not None:
                replies.append(reply)
        return replies

    def _take(self, obj: Any) -> Reply | None:
        if not isinstance(obj, dict):
            raise SerfProtocolError(f"expected a map from the agent, got {type(obj).__name__}")
        if self._awaiting_body is not None:
            body_seq, command, event = self._awaiting_body
            self._awaiting_body = None
            return Reply(body_seq, command, "", obj, event)
        optional, self._optional_body = self._optional_body, False
        if optional and not _is_header(obj):
            return None  # the failed command's body (e.g. `{"Num": 0}`): its error says it all
        if not _is_header(obj):
            raise SerfProtocolError(f"expected a reply header, got {sorted(obj)}")
        seq = int(obj["Seq"])
        error = str(obj["Error"] or "")
        if seq in self._pending:
            command = self._pending.pop(seq)
            if error:
                self._optional_body = command in BODY_REPLIES
                return Reply(seq, command, error, None)
            if command == "stream":
                self._streams.add(seq)
            if command in BODY_REPLIES:
                self._awaiting_body = (seq, command, False)
                return None
            return Reply(seq, command, "", None)
        if seq in self._streams:
            if error:
                return Reply(seq, "stream", error, None, event=True)
            self._awaiting_body = (seq, "stream", True)
            return None
        raise SerfProtocolError(f"a reply for Seq {seq}, which no request is waiting for")


def _is_header(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("Seq"), int) and "Error" in obj
