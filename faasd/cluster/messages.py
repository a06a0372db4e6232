"""What nodes send each other to place and run calls across the cluster. Pure: values in, bytes
out.

Three messages, one per hop of a call that does not stay on one node (`docs/cluster.md`):

* `Ticket`s, entry node → leader: a call's metadata, never its payload. Times travel as
  durations (`age_s` since the call arrived, `left_s` to its deadline), so the leader puts them
  on its own clock and no two hosts' clocks need to agree.
* `Assignment`, leader → entry node: "run these of your calls as part of batch `batch` on
  `worker`, at `config`", fenced by the leader's `term`. An assignment with `drop` set fails
  the calls instead (the policy gave up on them).
* `RunRequest` / `RunReply`, entry node → worker and back: the payloads of the entry's share
  of the batch, and each call's result. Tensors travel out of band in the sandbox protocol's
  frames (`faasd.sandbox.framing`), so a batch of images is not re-encoded as msgpack lists.

A malformed message raises `MessageError` (a 400 at the API) with what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from esg.model import Config
from faasd.errors import FaasdError
from faasd.gateway import CallResult, Held
from faasd.sandbox import framing
from faasd.sandbox.items import Item
from faasd.sandbox.protocol import (
    items_from_wire,
    items_to_wire,
    results_from_wire,
    results_to_wire,
)

#: No control message (tickets, an assignment, a reply without tensors) is larger than this.
MAX_CONTROL_BYTES = 4 << 20


class MessageError(ValueError):
    """The bytes are not a message of this module (corrupt, truncated, wrong kind)."""


@dataclass(frozen=True)
class Ticket:
    """One call waiting at its entry node, as the leader queues it."""

    id: str
    request_id: str
    app: str
    function: str
    age_s: float
    left_s: float
    entry: str
    attempt: int = 0
    #: the node holding its inputs (a workflow stage's predecessor's outputs), "" if none
    input_node: str = ""


@dataclass(frozen=True)
class Assignment:
    """The leader's command to an entry node (see the module docstring)."""

    term: int
    batch: str
    function: str
    config: Config
    gpu: int | None
    worker: str
    worker_address: str
    #: every call of the batch, whatever its entry (the worker waits for all of them)
    batch_ids: tuple[str, ...]
    #: the calls of this batch that entered at the node this assignment goes to
    ids: tuple[str, ...]
    #: set: do not run these calls, fail them with this reason (the policy dropped them)
    drop: str | None = None


@dataclass(frozen=True)
class BatchSummary:
    """How a batch went, as the entry node answers an assignment (the leader's completion)."""

    exec_s: float = 0.0
    cold_start: bool = False
    ok: bool = True
    #: the worker could not be reached before anything ran (the leader stops placing there)
    unreachable: bool = False


@dataclass(frozen=True)
class Job:
    """One call's payload in a run request."""

    id: str
    item: Item
    postprocess: bool
    left_s: float
    #: inputs still on the nodes that produced them, and how many successors read its outputs
    held: Mapping[str, Held] = field(default_factory=dict)
    keep_for: int = 0


@dataclass(frozen=True)
class RunRequest:
    term: int
    batch: str
    function: str
    config: Config
    gpu: int | None
    batch_ids: tuple[str, ...]
    jobs: tuple[Job, ...]
    #: calls of the batch this entry will not send (its client left): do not wait for them
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReply:
    summary: BatchSummary
    #: per call id: its result, or the error it failed with
    results: Mapping[str, CallResult | FaasdError] = field(default_factory=dict)


# ------------------------------------------------------------------ control messages (msgpack)


def encode_tickets(entry: str, tickets: Sequence[Ticket]) -> bytes:
    return pack({"entry": entry, "tickets": [
        [t.id, t.request_id, t.app, t.function, t.age_s, t.left_s, t.attempt, t.input_node]
        for t in tickets]})


def decode_tickets(data: bytes) -> list[Ticket]:
    doc = unpack(data, "tickets")
    try:
        entry = str(doc["entry"])
        return [Ticket(str(i), str(r), str(a), str(f), float(age), float(left), entry,
                       int(attempt), str(near))
                for i, r, a, f, age, left, attempt, near in doc["tickets"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"malformed tickets: {exc}") from None


def encode_refusals(refused: Mapping[str, FaasdError]) -> bytes:
    """The leader's answer to tickets: the calls it refused (the others are queued)."""
    return pack({i: [e.status, e.message] for i, e in refused.items()})


def decode_refusals(data: bytes) -> dict[str, FaasdError]:
    doc = unpack(data, "refusals") if data else {}
    try:
        return {str(i): remote_error(int(s), str(m), {}) for i, (s, m) in doc.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise MessageError(f"malformed refusals: {exc}") from None


def encode_assignment(a: Assignment) -> bytes:
    return pack({
        "term": a.term, "batch": a.batch, "fn": a.function, "config": _config(a.config),
        "gpu": a.gpu, "worker": a.worker, "addr": a.worker_address,
        "all": list(a.batch_ids), "ids": list(a.ids), "drop": a.drop,
    })


def decode_assignment(data: bytes) -> Assignment:
    doc = unpack(data, "assignment")
    try:
        return Assignment(
            term=int(doc["term"]), batch=str(doc["batch"]), function=str(doc["fn"]),
            config=_config_of(doc["config"]), gpu=_gpu_of(doc["gpu"]),
            worker=str(doc["worker"]), worker_address=str(doc["addr"]),
            batch_ids=tuple(map(str, doc["all"])), ids=tuple(map(str, doc["ids"])),
            drop=None if doc["drop"] is None else str(doc["drop"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"malformed assignment: {exc}") from None


def encode_summary(s: BatchSummary) -> bytes:
    return pack(_summary(s))


def decode_summary(data: bytes) -> BatchSummary:
    doc = unpack(data, "batch summary")
    try:
        return _summary_of(doc)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"malformed batch summary: {exc}") from None


# ------------------------------------------------------------------ payloads (frames)


def encode_run(r: RunRequest) -> list[framing.Buffer]:
    jobs = [[j.id, items_to_wire([j.item])[0], j.postprocess, j.left_s, j.keep_for,
             {i: [h.node, h.call_id, h.output] for i, h in j.held.items()}]
            for j in r.jobs]
    return framing.encode({
        "term": r.term, "batch": r.batch, "fn": r.function, "config": _config(r.config),
        "gpu": r.gpu, "all": list(r.batch_ids), "jobs": jobs, "skip": list(r.skipped),
    })


def decode_run(data: bytes) -> RunRequest:
    doc = unframe(data, "run request")
    try:
        jobs = tuple(Job(str(i), items_from_wire([item])[0], bool(post), float(left),
                         {str(k): Held(str(n), str(c), str(o)) for k, (n, c, o) in held.items()},
                         int(keep))
                     for i, item, post, left, keep, held in doc["jobs"])
        return RunRequest(
            term=int(doc["term"]), batch=str(doc["batch"]), function=str(doc["fn"]),
            config=_config_of(doc["config"]), gpu=_gpu_of(doc["gpu"]),
            batch_ids=tuple(map(str, doc["all"])), jobs=jobs,
            skipped=tuple(map(str, doc["skip"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"malformed run request: {exc}") from None


def encode_run_reply(reply: RunReply) -> list[framing.Buffer]:
    results: dict[str, Any] = {}
    for call_id, result in reply.results.items():
        if isinstance(result, FaasdError):
            results[call_id] = {"e": [result.status, result.message, result.extra]}
        else:
            results[call_id] = {
                "r": results_to_wire([result.result])[0], "cold": result.cold_start,
                "exec_s": result.exec_s, "queue_s": result.queue_s, "n": result.batch_size,
                "device": result.device, "node": result.node, "held_at": result.held_at,
                "config": None if result.config is None else _config(result.config),
            }
    return framing.encode({"summary": _summary(reply.summary), "results": results})


def decode_run_reply(data: bytes) -> RunReply:
    doc = unframe(data, "run reply")
    try:
        results: dict[str, CallResult | FaasdError] = {}
        for call_id, entry in doc["results"].items():
            if "e" in entry:
                status, message, extra = entry["e"]
                results[str(call_id)] = remote_error(int(status), str(message), dict(extra))
            else:
                config = entry["config"]
                results[str(call_id)] = CallResult(
                    result=results_from_wire([entry["r"]])[0], cold_start=bool(entry["cold"]),
                    exec_s=float(entry["exec_s"]), queue_s=float(entry["queue_s"]),
                    batch_size=int(entry["n"]), device=str(entry["device"]),
                    node=str(entry["node"]), held_at=str(entry["held_at"]),
                    config=None if config is None else _config_of(config),
                )
        return RunReply(_summary_of(doc["summary"]), results)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MessageError(f"malformed run reply: {exc}") from None


def remote_error(status: int, message: str, extra: Mapping[str, Any]) -> FaasdError:
    """An error another node answered with, keeping its status (a 504 stays a 504)."""
    error = FaasdError(message, **extra)
    error.status = status
    return error


# ------------------------------------------------------------------ helpers


def _summary(s: BatchSummary) -> list[Any]:
    return [s.exec_s, s.cold_start, s.ok, s.unreachable]


def _summary_of(raw: Any) -> BatchSummary:
    exec_s, cold, ok, unreachable = raw
    return BatchSummary(float(exec_s), bool(cold), bool(ok), bool(unreachable))


def _config(config: Config) -> list[int]:
    return [config.batch, config.vcpu, config.vgpu]


def _config_of(raw: Any) -> Config:
    batch, vcpu, vgpu = raw
    return Config(int(batch), int(vcpu), int(vgpu))


def _gpu_of(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def pack(value: Any) -> bytes:
    """A control message's bytes (msgpack)."""
    packed: bytes = msgpack.packb(value)
    return packed


def unpack(data: bytes, what: str) -> Any:
    """A control message `what` from its bytes; MessageError if it is not one."""
    if len(data) > MAX_CONTROL_BYTES:
        raise MessageError(f"{what} of {len(data)} bytes exceeds {MAX_CONTROL_BYTES}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise MessageError(f"{what} is not msgpack: {exc}") from None


def unframe(data: bytes, what: str) -> Any:
    """A payload message `what` from its frame; MessageError if it is not one."""
    try:
        return framing.decode_frame(data)
    except framing.FrameError as exc:
        raise MessageError(f"{what} is not a frame: {exc}") from None
