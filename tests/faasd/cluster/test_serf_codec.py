"""The Serf RPC codec against the wire facts verified on the Debian agent (no agent here)."""

from __future__ import annotations

import msgpack
import pytest

from faasd.cluster.members import Status, member_from_wire
from faasd.cluster.serf_codec import SerfCodec, SerfProtocolError


def pack(*objs: object) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)


def header(seq: int, error: str = "") -> dict[str, object]:
    return {"Seq": seq, "Error": error}


MEMBER = {"Name": "n2", "Addr": b"\x7f\x00\x00\x02", "Port": 7946,
          "Tags": {"role": "voter", "http": "127.0.0.2:8080"}, "Status": "alive",
          "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
          "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}


def test_requests_are_a_header_then_an_optional_body_with_increasing_seq() -> None:
    codec = SerfCodec()
    seq0, data0 = codec.handshake()
    seq1, data1 = codec.request("members")
    assert (seq0, seq1) == (0, 1)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data0 + data1)
    assert list(unpacker) == [{"Command": "handshake", "Seq": 0}, {"Version": 1},
                              {"Command": "members", "Seq": 1}]


def test_header_only_replies_and_a_members_body_in_one_chunk() -> None:
    codec = SerfCodec()
    codec.handshake()
    codec.request("auth", {"AuthKey": "k"})
    codec.request("members")
    codec.request("tags", {"Tags": {"a": "b"}, "DeleteTags": []})
    replies = codec.feed(pack(header(0), header(1), header(2), {"Members": [MEMBER]},
                              header(3)))
    assert [(r.seq, r.command, r.ok) for r in replies] == [
        (0, "handshake", True), (1, "auth", True), (2, "members", True), (3, "tags", True)]
    assert replies[2].body == {"Members": [MEMBER]}
    assert replies[3].body is None


def test_an_error_reply_has_no_body_even_for_members() -> None:
    # The pitfall: waiting for a members body after "Authentication required" hangs, and
    # taking the next header as that body puts the connection out of step.
    codec = SerfCodec()
    codec.request("members")
    codec.request("event", {"Name": "x", "Payload": b"", "Coalesce": False})
    replies = codec.feed(pack(header(0, "Authentication required"), header(1)))
    assert [(r.command, r.error, r.body) for r in replies] == [
        ("members", "Authentication required", None), ("event", "", None)]


def test_a_failed_join_reply_carries_its_body_and_the_connection_stays_in_step() -> None:
    # Verified on the agent: a join whose peer refuses the connection replies with the error
    # *and* `{"Num": 0}`. Taking that body for the next header dropped the RPC connection for
    # good: the node's member list froze and it could never rejoin.
    refused = ("1 error occurred:\n\t* Failed to join 127.0.0.22: dial tcp 127.0.0.22:7946: "
               "connect: connection refused\n\n")
    codec = SerfCodec()
    codec.request("join", {"Existing": ["127.0.0.22:7946"], "Replay": False})
    codec.request("members")
    codec.request("join", {"Existing": ["127.0.0.22:7946"], "Replay": False})
    codec.request("join", {"Existing": ["127.0.0.2:7946"], "Replay": False})
    data = pack(header(0, refused), {"Num": 0}, header(1), {"Members": [MEMBER]},
                header(2, "Authentication required"),  # refused before it ran: no body
                header(3), {"Num": 1})
    replies = [r for i in range(len(data)) for r in codec.feed(data[i:i + 1])]
    assert [(r.seq, r.command, r.error, r.body) for r in replies] == [
        (0, "join", refused, None), (1, "members", "", {"Members": [MEMBER]}),
        (2, "join", "Authentication required", None), (3, "join", "", {"Num": 1})]


def test_replies_fed_byte_by_byte_decode_the_same() -> None:
    codec = SerfCodec()
    codec.request("members")
    data = pack(header(0), {"Members": [MEMBER, MEMBER]})
    replies = [r for i in range(len(data)) for r in codec.feed(data[i:i + 1])]
    assert len(replies) == 1 and len(replies[0].body["Members"]) == 2  # type: ignore[index]


def test_a_stream_is_acked_by_a_header_then_each_event_has_a_body() -> None:
    codec = SerfCodec()
    seq, _ = codec.request("stream", {"Type": "member-join,user"})
    join = {"Event": "member-join", "Members": [MEMBER]}
    user = {"Event": "user", "LTime": 3, "Name": "hint", "Payload": b"\x01", "Coalesce": False}
    codec.request("members")  # interleaved with the stream's events
    replies = codec.feed(pack(header(seq), header(seq), join, header(1), {"Members": []},
                              header(seq), user))
    assert [(r.command, r.event, r.body) for r in replies] == [
        ("stream", False, None), ("stream", True, join), ("members", False, {"Members": []}),
        ("stream", True, user)]
    codec.end_stream(seq)
    with pytest.raises(SerfProtocolError, match="Seq 0"):
        codec.feed(pack(header(seq), join))


def test_a_reply_nobody_waits_for_is_a_protocol_error() -> None:
    codec = SerfCodec()
    with pytest.raises(SerfProtocolError, match="Seq 7"):
        codec.feed(pack(header(7)))
    with pytest.raises(SerfProtocolError, match="map"):
        SerfCodec().feed(pack([1, 2]))


def test_a_member_map_decodes_address_bytes_and_tags() -> None:
    member = member_from_wire(MEMBER)
    assert (member.name, member.address, member.status) == ("n2", "127.0.0.2:7946",
                                                             Status.ALIVE)
    assert (member.role, member.http, member.etcd_url) == ("voter", "127.0.0.2:8080", None)
    six = member_from_wire({**MEMBER, "Addr": b"\x00" * 15 + b"\x01", "Status": "reaped"})
    assert six.address == "[::1]:7946"
    assert six.status is Status.FAILED  # an unknown state is never shown as alive
