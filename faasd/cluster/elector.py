"""The election's I/O loop: campaign with a kept-alive lease, and watch who leads.

A voter runs `campaign_loop`: grant a lease of `ttl_s`, keep it alive every `ttl_s / 3`, and
campaign (a blocking POST that returns once this node leads). Leadership ends when a keepalive
says the lease is gone or none has succeeded for a whole TTL; then it starts over with a fresh
lease. Every node (voter or not) runs `watch_loop`, asking etcd for the leader every `poll_s`.
The decisions are `ElectionState`'s; this module only moves requests and the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from faasd.clock import Clock
from faasd.cluster.errors import EtcdError
from faasd.cluster.etcd_client import EtcdClient
from faasd.cluster.leadership import ElectionState, Leader

log = logging.getLogger("faasd.cluster")

ELECTION = "faasd/leader"
_ERRORS = (EtcdError, OSError, TimeoutError)


class Elector:
    """`campaign=False` for nodes that only follow. `on_change(leader)` is called whenever
    the leader or term this node sees changes."""

    def __init__(
        self,
        client: EtcdClient,
        me: str,
        clock: Clock,
        *,
        campaign: bool,
        ttl_s: int = 2,
        poll_s: float = 0.25,
        election: str = ELECTION,
        on_change: Callable[[Leader], None] | None = None,
    ) -> None:
        self.client = client
        self.state = ElectionState(me)
        self._clock = clock
        self._campaign = campaign
        self._ttl_s = ttl_s
        self._poll_s = poll_s
        self._election = election
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._won: dict[str, Any] | None = None
        self._lease: str | None = None
        self._last: Leader = Leader(None, 0)
        self.changed = asyncio.Event()

    def leader(self) -> Leader:
        return self.state.leader(self._clock.now())

    def is_leader(self) -> bool:
        return self.state.leading(self._clock.now())

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self.watch_loop()))
        if self._campaign:
            self._tasks.append(asyncio.ensure_future(self.campaign_loop()))

    async def stop(self) -> None:
        """Stop campaigning; a leader resigns and revokes its lease so the next one is
        elected at once rather than after a TTL."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        won, lease = self._won, self._lease
        self._won = self._lease = None
        self.state.lost()
        with contextlib.suppress(*_ERRORS):
            if won is not None:
                await self.client.resign(won)
            if lease is not None:
                await self.client.lease_revoke(lease)

    def _notify(self) -> None:
        now = self.leader()
        if now != self._last:
            self._last = now
            log.info("leader: %s (term %d)", now.name or "none", now.term)
            self.changed.set()
            self.changed = asyncio.Event()
            if self._on_change is not None:
                self._on_change(now)

    async def watch_loop(self) -> None:
        while True:
            try:
                found = await self.client.leader(self._election)
            except _ERRORS as exc:
                log.debug("asking etcd for the leader failed: %s", exc)
            except Exception:  # a bug must not end the watch for good
                log.exception("asking etcd for the leader failed")
            else:
                if found is None:
                    self.state.observed(None, 0)
                else:
                    self.state.observed(found.name, found.term)
            self._notify()
            await asyncio.sleep(self._poll_s)

    async def campaign_loop(self) -> None:
        while True:
            try:
                await self._one_lease()
            except _ERRORS as exc:
                log.warning("campaign interrupted: %s; trying again", exc)
            except Exception:  # a bug must not end the campaign for good
                log.exception("campaign failed; trying again")
            self.state.lost()
            self._won = None
            if self._lease is not None:
                lease, self._lease = self._lease, None
                with contextlib.suppress(*_ERRORS):
                    await self.client.lease_revoke(lease)
            self._notify()
            await asyncio.sleep(self._ttl_s / 4)

    async def _one_lease(self) -> None:
        """One lease's life: campaign until elected, lead while the lease lives."""
        sent = self._clock.now()
        lease, ttl_s = await self.client.lease_grant(self._ttl_s)
        self._lease = lease
        self.state.renewed(sent, ttl_s)
        keeper = asyncio.ensure_future(self._keep_alive(lease, ttl_s))
        campaign: asyncio.Future[dict[str, Any]] | None = None
        try:
            while not keeper.done():
                campaign = asyncio.ensure_future(
                    self.client.campaign(self._election, lease, self.state.me))
                done, _ = await asyncio.wait({keeper, campaign},
                                             return_when=asyncio.FIRST_COMPLETED)
                if campaign in done:
                    try:
                        self._won = campaign.result()
                    except _ERRORS as exc:  # its endpoint went away: campaign on another
                        log.info("campaign request failed (%s); campaigning again", exc)
                        await asyncio.sleep(0.1)
                        continue
                    self.state.won(int(self._won["rev"]))
                    self._notify()
                    await keeper
                    return
        finally:
            for task in (campaign, keeper):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                        await task

    async def _keep_alive(self, lease: str, ttl_s: int) -> None:
        """Renew every TTL/3; return once the lease is gone or could have expired.

        A renewal counts only once a linearizable read in the same raft term has followed
        it. etcd 3.4 renews a lease on its raft leader without consensus, and a raft leader
        cut off from the others keeps renewing until it notices (about an election timeout),
        while the majority has elected another raft leader, whose lease clock started over
        from its election. Counting those renewals, a cut-off faasd leader once went on
        believing in its lease for about half a second after the majority had elected
        another (one run of tests/faasd/cluster/test_partition.py, from the nodes' logs; eight
        later runs without this check did not show it again)."""
        last_ok = self._clock.now()
        while True:
            await asyncio.sleep(ttl_s / 3)
            sent = self._clock.now()
            if sent - last_ok >= ttl_s:
                log.warning("lease %s not renewed for %d s: giving up leadership", lease, ttl_s)
                return
            try:
                renewal = await self.client.lease_keepalive(lease, timeout_s=ttl_s / 3)
                if renewal.ttl_s <= 0:
                    log.warning("lease %s expired at etcd", lease)
                    return
                term = await self.client.quorum_term(self._election, timeout_s=ttl_s / 3)
            except _ERRORS as exc:
                log.info("lease keepalive failed: %s", exc)
                continue
            if term != renewal.raft_term:
                log.info("lease %s renewed in raft term %d, but the quorum is in term %d: "
                         "not counted", lease, renewal.raft_term, term)
                continue
            last_ok = sent
            self.state.renewed(sent, renewal.ttl_s)
            self._notify()
