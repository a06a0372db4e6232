"""The election state machine and the fencing rule, driven by hand-picked times (pure)."""

from __future__ import annotations

from faasd.cluster.leadership import ElectionState, Fence, Leader


def test_a_won_campaign_leads_until_its_last_renewal_plus_ttl() -> None:
    s = ElectionState("a")
    s.renewed(sent_at=10.0, ttl_s=2)  # the grant, sent at 10.0
    s.won(term=5)
    assert s.leading(11.9) and s.leader(11.9) == Leader("a", 5)
    # no renewal since: at 12.0 the lease may have expired at etcd, so a stops leading
    assert not s.leading(12.0)
    assert s.leader(12.0) == Leader(None, 5)
    s.renewed(sent_at=11.5, ttl_s=2)  # a keepalive sent at 11.5 answered
    assert s.leading(13.4) and not s.leading(13.5)


def test_a_keepalive_that_says_ttl_0_or_a_lost_lease_ends_leadership_at_once() -> None:
    s = ElectionState("a")
    s.renewed(0.0, 2)
    s.won(3)
    s.renewed(0.5, 0)
    assert not s.leading(0.6)
    s.renewed(1.0, 2)
    s.won(4)
    s.lost()
    assert not s.leading(1.1) and s.leader(1.1) == Leader(None, 4)


def test_observed_leaders_only_move_the_term_forward() -> None:
    s = ElectionState("a")
    s.observed("b", 7)
    assert s.leader(0) == Leader("b", 7)
    s.observed("c", 6)  # a stale read from a lagging member
    assert s.leader(0) == Leader("b", 7)
    s.observed(None, 0)  # b's lease expired and nobody leads yet
    assert s.leader(0) == Leader(None, 7)
    s.observed("c", 9)
    assert s.leader(0) == Leader("c", 9)


def test_a_leader_that_sees_a_higher_term_has_been_replaced() -> None:
    s = ElectionState("a")
    s.renewed(0.0, 2)
    s.won(4)
    s.observed("b", 6)  # b won while a's renewals were in flight
    assert not s.leading(0.1)
    assert s.leader(0.1) == Leader("b", 6)
    s.won(5)  # a campaign answer older than what was seen is no leadership
    assert not s.leading(0.2)


def test_polling_no_leader_does_not_hide_our_own_live_leadership() -> None:
    s = ElectionState("a")
    s.renewed(0.0, 2)
    s.won(4)
    s.observed(None, 0)  # a read that raced the campaign's write
    assert s.leader(0.5) == Leader("a", 4)


def test_the_fence_refuses_commands_of_an_older_term() -> None:
    f = Fence()
    assert f.admit(3)
    assert f.admit(3)  # the same leader again
    f.see(5)  # a newer leader was observed
    assert not f.admit(4)
    assert f.admit(5) and f.max_term == 5
