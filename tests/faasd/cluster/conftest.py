"""Fixtures of the cluster tests: loopback addresses no other test or run is using."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.apis import keyed_root


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


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """A module's nodes' state directories, with a gossip key in `gossip.key`."""
    with keyed_root() as directory:
        yield directory
