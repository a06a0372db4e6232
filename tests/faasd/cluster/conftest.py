"""Fixtures of the cluster tests: loopback addresses no other test or run is using."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.faasd.cluster.addresses import Addresses


@pytest.fixture(scope="session")
def addresses() -> Iterator[Addresses]:
    pool = Addresses()
    yield pool
    pool.release(list(pool.held))


@pytest.fixture
def loopback(addresses: Addresses) -> Iterator[Callable[[int], list[str]]]:
    """`loopback(n)`: n fresh 127.0.0.x addresses, reserved until the test ends."""
    taken: list[str] = []

    def take(count: int) -> list[str]:
        new = addresses.take(count)
        taken.extend(new)
        return new

    yield take
    addresses.release(taken)
