"""What each node tells the leader about itself, msgpack-encoded, and the leader's book (pure).

The scheduler needs more than gossip tags carry (Serf's user events stop at 512 bytes, and
tags change slowly): free vCPUs and GPU units, idle warm sandboxes by shape, queue lengths and
batches running. Every node sends its `NodeState` to the leader when it changes (coalesced
over a few milliseconds) and at least once a second (`faasd.cluster.state_reporter`); the
leader keeps the newest of each node in a `StateBook`.

Ordering: a report carries its sender's `epoch` (new at every daemon start) and a sequence
number. Within an epoch a report older than the one kept is dropped (two reports can cross on
the wire); a report of another epoch is taken, since the node has restarted.

Times are the sender's wall clock: `as_of_wall` when the state was read, `changed_wall` the
oldest change it carries that no earlier report did (`as_of_wall` for a heartbeat with no
change). The leader's arrival time minus `changed_wall` is how long a change took to reach
it (`faasd_cluster_state_staleness_seconds`); across hosts that figure is only as good as
their clocks' agreement.

Warm sandboxes travel by shape (function, vCPUs, GPU units): a sandbox serves every batch
size of its function, and the leader knows each function's batch sizes from its deployment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

#: Bumped when the encoding changes; a report of another format is refused, not misread.
FORMAT = 2
#: No node reports more than this (a bound on what a malformed or hostile report can cost).
MAX_REPORT_BYTES = 1 << 20


@dataclass(frozen=True)
class Shape:
    """Idle warm sandboxes of one function with `vcpu` vCPUs and `vgpu` GPU units."""

    function: str
    vcpu: int
    vgpu: int
    idle: int


@dataclass(frozen=True)
class GpuUnits:
    index: int
    total_units: int
    free_units: int
    #: "mig" (only existing instance sizes can be handed out) or "mps"
    mode: str = "mig"


@dataclass(frozen=True)
class NodeState:
    node: str
    epoch: str
    seq: int
    as_of_wall: float
    changed_wall: float
    total_vcpu: int
    free_vcpu: int
    healthy: bool = True
    #: queued jobs per function (every application's queue of it together)
    queued: Mapping[str, int] = field(default_factory=dict)
    #: batches running per function
    running: Mapping[str, int] = field(default_factory=dict)
    warm: tuple[Shape, ...] = ()
    gpus: tuple[GpuUnits, ...] = ()

    def encode(self) -> bytes:
        body = [
            FORMAT, self.node, self.epoch, self.seq, self.as_of_wall, self.changed_wall,
            self.total_vcpu,
            self.free_vcpu, self.healthy, dict(self.queued), dict(self.running),
            [[s.function, s.vcpu, s.vgpu, s.idle] for s in self.warm],
            [[g.index, g.total_units, g.free_units, g.mode] for g in self.gpus],
        ]
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> NodeState:
        """The report in `data`; ValueError saying what is wrong with it."""
        if len(data) > MAX_REPORT_BYTES:
            raise ValueError(f"a node state report is at most {MAX_REPORT_BYTES} bytes, "
                             f"this one is {len(data)}")
        try:
            body = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ValueError(f"a node state report must be msgpack: {exc}") from None
        if not isinstance(body, list) or len(body) != 13:
            raise ValueError("a node state report is a msgpack array of 13 fields")
        if body[0] != FORMAT:
            raise ValueError(f"node state format {body[0]!r} is not {FORMAT}: upgrade the "
                             "nodes to one faasd version")
        (_, node, epoch, seq, as_of, changed, total, free, healthy, queued, running, warm,
         gpus) = body
        return cls(
            node=_text(node, "node"), epoch=_text(epoch, "epoch"), seq=_count(seq, "seq"),
            as_of_wall=_number(as_of, "as_of_wall"), changed_wall=_number(changed, "changed_wall"),
            total_vcpu=_count(total, "total_vcpu"),
            free_vcpu=_count(free, "free_vcpu"), healthy=_flag(healthy, "healthy"),
            queued=_counts(queued, "queued"), running=_counts(running, "running"),
            warm=tuple(Shape(_text(f, "warm function"), _count(c, "warm vcpu"),
                             _count(g, "warm vgpu"), _count(n, "warm idle"))
                       for f, c, g, n in _rows(warm, "warm", 4)),
            gpus=tuple(GpuUnits(_count(i, "gpu index"), _count(t, "gpu total_units"),
                                _count(u, "gpu free_units"), _text(m, "gpu mode"))
                       for i, t, u, m in _rows(gpus, "gpus", 4)),
        )

    def as_json(self, age_s: float) -> dict[str, Any]:
        """What `GET /system/nodes` shows of it at the leader; `age_s`: since it was read."""
        return {
            "total_vcpu": self.total_vcpu,
            "free_vcpu": self.free_vcpu,
            "healthy": self.healthy,
            "queued": dict(self.queued),
            "running": dict(self.running),
            "warm": [{"function": s.function, "vcpu": s.vcpu, "vgpu": s.vgpu, "idle": s.idle}
                     for s in self.warm],
            "gpus": [{"index": g.index, "total_units": g.total_units,
                      "free_units": g.free_units, "mode": g.mode} for g in self.gpus],
            "age_ms": round(max(0.0, age_s) * 1000, 1),
        }


class StateBook:
    """The newest report of each node, as the leader has received them."""

    def __init__(self) -> None:
        self._latest: dict[str, NodeState] = {}

    def offer(self, state: NodeState) -> bool:
        """Keep `state` unless an equal or newer report of the same epoch is kept already."""
        kept = self._latest.get(state.node)
        if kept is not None and kept.epoch == state.epoch and kept.seq >= state.seq:
            return False
        self._latest[state.node] = state
        return True

    def get(self, node: str) -> NodeState | None:
        return self._latest.get(node)

    def forget(self, node: str) -> None:
        self._latest.pop(node, None)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(list(self._latest.values()))


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"node state {what} must be a non-empty string, got {value!r}")
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"node state {what} must be a whole number >= 0, got {value!r}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"node state {what} must be a number, got {value!r}")
    return float(value)


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"node state {what} must be true or false, got {value!r}")
    return value


def _counts(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"node state {what} must be a map of function to count")
    return {_text(k, f"{what} key"): _count(v, f"{what}[{k!r}]") for k, v in value.items()}


def _rows(value: object, what: str, width: int) -> list[list[Any]]:
    if not isinstance(value, list) or not all(
        isinstance(row, list) and len(row) == width for row in value
    ):
        raise ValueError(f"node state {what} must be a list of {width}-field rows")
    return value
