"""The profile store on a real SQLite file: round trips, restarts, versions, fitted marks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from esg.model import Config, Profile
from esg.refine import Point
from faasd.profiles.store import ColdStarts, ProfileStore

A, B, C = Config(1, 1), Config(4, 1), Config(2, 1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "profiles.sqlite"


def recorded(path: Path) -> ProfileStore:
    store = ProfileStore(path)
    store.set_current("f", 1)
    store.record("f", 1, {A: Point.measured(2.0, 0.1, 3), B: Point.measured(6.0, 0.2, 3)},
                 {C: 4.0})
    return store


def test_round_trip_survives_a_restart(path: Path) -> None:
    store = recorded(path)
    store.observe_cold_start("f", 1, 120.0)
    store.observe_cold_start("f", 1, 80.0)
    before = store.profile("f", 1)
    store.close()

    again = ProfileStore(path)
    assert again.profile("f", 1) == before
    assert before == Profile("f", {A: 2.0, B: 6.0, C: 4.0}, before.version)
    assert again.points("f", 1)[C].fitted and not again.points("f", 1)[A].fitted
    assert again.points("f", 1)[B].std_ms == pytest.approx(0.2)
    assert again.cold_starts("f", 1) == ColdStarts(2, 100.0, 120.0)
    assert again.cold_starts_ms() == {"f": 100.0}
    assert again.profiles() == {"f": before}
    again.close()


def test_refinements_are_written_by_flush(path: Path) -> None:
    store = recorded(path)
    for _ in range(10):
        store.observe("f", 1, A, 3.0)  # 2 ms (3 samples) -> 2.77 ms after 10 of 3 ms
    version = store.profile_version("f", 1)
    assert store.flush() == 1
    # what a crash after the flush would leave: the file as it is (no close)
    again = ProfileStore(path)
    assert again.points("f", 1)[A] == store.points("f", 1)[A]
    assert again.points("f", 1)[A].count == 13
    assert again.profile_version("f", 1) == version
    store.close()
    again.close()


def test_unflushed_refinements_are_not_on_disk(path: Path) -> None:
    store = recorded(path)
    store.observe("f", 1, A, 50.0)
    peek = ProfileStore(path)
    assert peek.points("f", 1)[A].count == 3
    peek.close()
    store.close()  # close flushes
    assert ProfileStore(path).points("f", 1)[A].count == 4


def test_versions_change_with_the_table_only(path: Path) -> None:
    store = recorded(path)
    assert store.observe("f", 1, A, 2.0)  # its first execution: planned as run, not scaled
    first = store.profile_version("f", 1)
    view = store.profiles()
    assert store.profiles() is view  # cached until something changes
    assert not store.observe("f", 1, A, 2.0)  # the same latency again: nothing published
    assert store.profile_version("f", 1) == first and store.profiles() is view
    assert store.observe("f", 1, C, 9.0)  # a fitted point measured: published at once
    second = store.profile_version("f", 1)
    assert second > first
    assert store.profiles() is not view and store.profiles()["f"].version == second
    assert store.profiles()["f"].latency_ms[C] == 9.0
    assert not store.points("f", 1)[C].fitted
    # versions come from one counter: another function's change never reuses a number
    store.set_current("g", 1)
    store.record("g", 1, {A: Point.measured(1.0, 0.0, 1)}, {})
    assert store.profile_version("g", 1) > second
    store.close()
    assert ProfileStore(path).profile_version("g", 1) == store.profile_version("g", 1)


def test_planners_see_what_only_the_profiler_timed_at_the_slowdown_under_load(
    path: Path,
) -> None:
    """A (2 ms alone) runs at 4 ms under load: with the profiler's 3 samples its mean after 3
    executions is 3 ms, ×1.5. B, timed alone only, and C, fitted, are planned ×1.5 too; the
    store keeps what it needs for that across a restart."""
    store = recorded(path)
    for _ in range(3):
        store.observe("f", 1, A, 4.0)
    expected = {A: pytest.approx(3.0), B: pytest.approx(9.0), C: pytest.approx(6.0)}
    assert store.profiles()["f"].latency_ms == expected
    assert store.points("f", 1)[B].published_ms == 6.0  # the point itself is untouched
    store.close()
    again = ProfileStore(path)
    assert again.points("f", 1)[A].executions == 3 and again.points("f", 1)[A].profiled_ms == 2.0
    assert again.profiles()["f"].latency_ms == expected
    again.close()


def test_a_file_from_before_the_slowdown_columns_opens_as_it_was(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE points (
                function TEXT NOT NULL, version INTEGER NOT NULL,
                batch INTEGER NOT NULL, vcpu INTEGER NOT NULL, vgpu INTEGER NOT NULL,
                mean_ms REAL NOT NULL, var_ms2 REAL NOT NULL, count INTEGER NOT NULL,
                fitted INTEGER NOT NULL, published_ms REAL NOT NULL,
                PRIMARY KEY (function, version, batch, vcpu, vgpu));
            CREATE TABLE current (function TEXT PRIMARY KEY, version INTEGER NOT NULL);
            INSERT INTO points VALUES ('f', 1, 1, 1, 0, 2.5, 0.0, 30, 0, 2.5);
            INSERT INTO points VALUES ('f', 1, 4, 1, 0, 6.0, 0.0, 3, 0, 6.0);
            INSERT INTO current VALUES ('f', 1);
        """)
    db.close()
    store = ProfileStore(path)
    assert store.profiles()["f"].latency_ms == {A: 2.5, B: 6.0}  # no factor without the facts
    store.observe("f", 1, A, 2.5)
    store.close()
    assert ProfileStore(path).points("f", 1)[A].executions == 1


def test_a_fit_never_overwrites_a_measurement(path: Path) -> None:
    store = recorded(path)
    store.observe("f", 1, Config(3, 1), 5.5)  # a real batch of 3
    store.record("f", 1, {}, {Config(3, 1): 5.0, C: 4.5})
    points = store.points("f", 1)
    assert points[Config(3, 1)].mean_ms == 5.5 and not points[Config(3, 1)].fitted
    assert points[C].mean_ms == 4.5 and points[C].fitted  # a fit replaces a fit
    store.close()


def test_current_versions_and_pruning(path: Path) -> None:
    store = recorded(path)
    store.set_current("f", 2)  # a redeploy: a new version starts with no profile
    assert store.profiles() == {} and store.profile("f", 1) is not None
    store.record("f", 2, {A: Point.measured(1.0, 0.0, 2)}, {})
    assert set(store.profiles()) == {"f"} and store.profiles()["f"].latency_ms == {A: 1.0}
    store.set_current("f", 3)  # v1 is two versions back now: gone, v2 kept for a rollback
    assert store.profile("f", 1) is None and store.profile("f", 2) is not None
    store.set_current("f", None)  # removed: everything goes
    assert store.profile("f", 2) is None and store.profiles() == {}
    store.close()
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM points").fetchone()
    assert rows == (0,)


def test_close_is_idempotent(path: Path) -> None:
    store = recorded(path)
    store.close()
    store.close()
    store.observe_cold_start("f", 1, 50.0)  # late: dropped, no error
