"""Option tables: reused while a profile is unchanged, rebuilt the moment its content changes."""

from __future__ import annotations

from esg.model import Config, Profile
from esg.pricing import Pricing
from esg.profiles import Capacity
from esg.search import Option
from esg.tables import OptionTables, partial_batch

CAPACITY = Capacity(16, frozenset({0, 1, 2, 3, 4, 7}))


def test_generations_follow_content_not_identity() -> None:
    tables = OptionTables(Pricing(1.0, 10.0), k=8)
    p = Profile("f", {Config(1, 1): 10.0})
    first = tables.generation(p)
    assert tables.generation(p) == first
    # An equal profile rebuilt by the driver: same table, same generation.
    assert tables.generation(Profile("f", {Config(1, 1): 10.0})) == first
    # Same version number, different content: a new generation (no stale plans).
    changed = tables.generation(Profile("f", {Config(1, 1): 12.0}))
    assert changed != first
    assert tables.priced(Profile("f", {Config(1, 1): 12.0}), CAPACITY, None)[0].latency_ms == 12.0


def test_prepared_tables_restrict_the_head_and_share_partial_batches() -> None:
    tables = OptionTables(Pricing(1.0, 10.0), k=8)
    p = Profile("f", {Config(1, 1): 100.0, Config(4, 1): 200.0, Config(1, 2, 1): 20.0})
    only = frozenset({Config(4, 1), Config(1, 1)})
    prepared = tables.prepared(p, CAPACITY, None, jobs=2, only=only)
    by_config = {o.config: o.cost for o in prepared.options}
    # (1,2,1) is not allowed; (4,1) with 2 jobs costs its batch cost (1 vCPU * 0.2 s) / 2.
    assert set(by_config) == set(only)
    assert by_config[Config(4, 1)] == 0.1
    assert by_config[Config(1, 1)] == 0.1  # 1 vCPU * 0.1 s / 1
    assert tables.prepared(p, CAPACITY, None, jobs=2, only=only) is prepared  # cached


def test_partial_batch_keeps_small_batches_as_they_are() -> None:
    option = Option(Config(2, 1), 10.0, 1.0)
    assert partial_batch(option, 2) is option
    assert partial_batch(option, 1) == Option(Config(2, 1), 10.0, 2.0)


def test_extremes_are_the_fastest_and_the_cheapest_alone_and_follow_the_profile() -> None:
    tables = OptionTables(Pricing(1.0, 10.0), k=8)
    # One request alone: (1,1) costs 1 vCPU x 0.1 s = 0.1, (4,1) its whole batch 1 x 0.2 s =
    # 0.2, (1,2,1) 2 vCPUs x 0.02 s + 1 unit x 10 x 0.02 s = 0.24: the cheapest alone is (1,1),
    # the fastest (1,2,1).
    p = Profile("f", {Config(1, 1): 100.0, Config(4, 1): 200.0, Config(1, 2, 1): 20.0})
    assert tables.extremes(p, CAPACITY, None) == (20.0, 100.0)
    # Without GPU slices and with batch 1 only, both are (1,1); a changed profile is seen.
    cpu_only = Capacity(16, frozenset({0}))
    assert tables.extremes(p, cpu_only, None) == (100.0, 100.0)
    assert tables.extremes(Profile("f", {Config(1, 1): 90.0}), cpu_only, None) == (90.0, 90.0)
    # Nothing runnable: no extremes (a 32-vCPU configuration on a 16-vCPU cluster).
    assert tables.extremes(Profile("g", {Config(1, 32): 5.0}), CAPACITY, None) is None
