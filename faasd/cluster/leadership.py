"""Who leads, at which term: the election's state machine and the fencing rule (pure).

The term is the etcd revision at which the leader's election key was created (campaign's
`leader.rev` = `create_revision`): unique per leadership and increasing across failovers, so
it is the fencing token every command from the leader carries. Time comes in as `now`.

A node leads from the moment its campaign returns until its lease could have expired: a lease
renewed by a keepalive *sent* at `t` is alive until at least `t + ttl` on etcd's side, but
could expire as soon as then, so the node counts its leadership only up to `t + ttl`. A leader
cut off from etcd therefore stops leading within one TTL, before etcd hands the key to someone
else. Observed leaders (from polling etcd) only ever move the term forward; a lower term is a
stale read and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Leader:
    """The leader as this node sees it; `name` None while none is known."""

    name: str | None
    term: int


class ElectionState:
    def __init__(self, me: str) -> None:
        self.me = me
        self._term = 0  # the highest term seen, won or observed
        self._observed: str | None = None
        self._won_term: int | None = None
        self._lease_until = float("-inf")

    @property
    def term(self) -> int:
        return self._term

    def renewed(self, sent_at: float, ttl_s: float) -> None:
        """A keepalive sent at `sent_at` came back with `ttl_s` left (grant counts too)."""
        if ttl_s <= 0:
            self.lost()
            return
        self._lease_until = max(self._lease_until, sent_at + ttl_s)

    def won(self, term: int) -> None:
        """The campaign returned with `term`; a term below one already seen is refused."""
        if term < self._term:
            return
        self._term = term
        self._won_term = term
        self._observed = self.me

    def lost(self) -> None:
        """The lease is gone (keepalive failed for a TTL, or etcd said TTL 0)."""
        self._won_term = None
        self._lease_until = float("-inf")
        if self._observed == self.me:
            self._observed = None

    def observed(self, leader: str | None, term: int) -> None:
        """etcd says `leader` leads at `term` (None: nobody leads now)."""
        if leader is None:
            if self._observed != self.me or self._won_term is None:
                self._observed = None
            return
        if term < self._term:
            return
        self._term = term
        self._observed = leader
        if self._won_term is not None and term > self._won_term:
            self._won_term = None  # someone won after us: our lease must have gone

    def leading(self, now: float) -> bool:
        return (self._won_term is not None and self._won_term == self._term
                and now < self._lease_until)

    def leader(self, now: float) -> Leader:
        if self.leading(now):
            return Leader(self.me, self._term)
        if self._observed == self.me:  # we won once but can no longer vouch for the lease
            return Leader(None, self._term)
        return Leader(self._observed, self._term)


class Fence:
    """A node's fencing rule: admit a command only if its term is not older than the highest
    term this node has admitted or seen."""

    def __init__(self) -> None:
        self.max_term = 0

    def see(self, term: int) -> None:
        self.max_term = max(self.max_term, term)

    def admit(self, term: int) -> bool:
        if term < self.max_term:
            return False
        self.max_term = term
        return True
