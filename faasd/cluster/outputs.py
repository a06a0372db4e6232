"""Workflow stages' outputs kept on the node that produced them until their successors read
them, and the wire form of a read from another node. Pure: time comes in as `now`.

A stage that has successors runs with `keep_for` = their number; the worker keeps its output
tensors here and answers the entry node with where they are. Each successor's node takes them
once: from this store when it is the same node (no copy), else through
`POST /system/cluster/outputs` on the holder (`encode_pull` / `encode_pulled`). The last read
frees them; outputs nobody reads (the workflow call failed elsewhere) go after `ttl_s`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from faasd.cluster.messages import MessageError, pack, unframe, unpack
from faasd.sandbox import framing

#: How long outputs wait for a successor that never reads them.
TTL_S = 60.0


@dataclass
class _Kept:
    tensors: Mapping[str, np.ndarray]
    reads_left: int


class OutputStore:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._kept: dict[str, _Kept] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self.served = 0  # reads by other nodes
        self.read_here = 0  # reads by successors on this node

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, call_id: str, tensors: Mapping[str, np.ndarray], reads: int,
            now: float) -> None:
        self.expire(now)
        self._kept[call_id] = _Kept(dict(tensors), reads)
        self._expiry.append((now + self._ttl_s, call_id))

    def take(self, call_id: str, names: Iterable[str], now: float,
             local: bool = True) -> dict[str, np.ndarray] | None:
        """The outputs `names` of `call_id`, for one successor (None: not here, or gone)."""
        self.expire(now)
        kept = self._kept.get(call_id)
        if kept is None or any(n not in kept.tensors for n in names):
            return None
        kept.reads_left -= 1
        if kept.reads_left <= 0:
            del self._kept[call_id]
        if local:
            self.read_here += 1
        else:
            self.served += 1
        return {n: kept.tensors[n] for n in names}

    def expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, call_id = self._expiry.popleft()
            self._kept.pop(call_id, None)

    def describe(self) -> dict[str, int]:
        return {"held": len(self._kept), "served": self.served, "read_here": self.read_here}


def encode_pull(wanted: Mapping[str, Iterable[str]]) -> bytes:
    """A read of other nodes' outputs: call id → output names."""
    return pack([[call_id, sorted(names)] for call_id, names in wanted.items()])


def decode_pull(data: bytes) -> dict[str, list[str]]:
    doc = unpack(data, "output read")
    try:
        return {str(call_id): [str(n) for n in names] for call_id, names in doc}
    except (ValueError, TypeError) as exc:
        raise MessageError(f"malformed output read: {exc}") from None


def encode_pulled(found: Mapping[str, Mapping[str, np.ndarray] | None]) -> bytes:
    """The answer: each call's tensors, or None where this node does not hold them."""
    return framing.encode_bytes(dict(found))


def decode_pulled(data: bytes) -> dict[str, dict[str, np.ndarray] | None]:
    doc = unframe(data, "outputs")
    try:
        return {str(k): None if v is None else {str(n): t for n, t in v.items()}
                for k, v in doc.items()}
    except (AttributeError, TypeError) as exc:
        raise MessageError(f"malformed outputs: {exc}") from None
