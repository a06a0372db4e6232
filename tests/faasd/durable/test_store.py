"""The async call record in a real SQLite file: WAL, keys, exactly-once finishing, purge."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from faasd.durable.store import Call, CallStore, State, fingerprint


def _call(call_id: str, key: str | None = None, body: bytes = b"{}", t: float = 1.0) -> Call:
    return Call(id=call_id, function="f", state=State.QUEUED, body=body,
                content_type="application/json", header_length=None, callback_url=None,
                idem_key=key, fingerprint=fingerprint("f", body, "application/json", None),
                attempts=0, created_s=t)


@pytest.fixture
def store(tmp_path: Path) -> CallStore:
    return CallStore(tmp_path)


def test_wal_and_a_second_reader_sees_an_accepted_call(store: CallStore) -> None:
    store.accept(_call("a"))
    other = sqlite3.connect(store.path)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert other.execute("SELECT state FROM invocations WHERE id = 'a'").fetchone() == ("queued",)
    other.close()


def test_an_idempotency_key_returns_the_first_call(store: CallStore) -> None:
    first = store.accept(_call("a", key="k1"))
    again = store.accept(_call("b", key="k1"))
    assert again.id == first.id == "a"
    other = _call("c", key="k1", body=b'{"x": 1}')
    held = store.accept(other)
    assert held.id == "a" and held.fingerprint != other.fingerprint  # the runner's 422
    assert store.accept(_call("d")).id == "d"  # no key: always a new call
    assert store.queued_count("f") == 2


def test_a_call_finishes_exactly_once(store: CallStore) -> None:
    store.accept(_call("a"))
    first = store.start("a", 2.0)
    second = store.start("a", 3.0)  # a restart ran it again
    assert (first, second) == (1, 2)
    assert not store.finish("a", 1, State.SUCCEEDED, 4.0, 200, "text/plain", b"old", None)
    assert store.finish("a", 2, State.SUCCEEDED, 4.0, 200, "text/plain", b"new", None)
    assert not store.finish("a", 2, State.FAILED, 5.0, 500, None, None, "late")
    done = store.get("a")
    assert done is not None and done.state is State.SUCCEEDED and done.result == b"new"
    assert store.start("a", 6.0) == 2  # a finished call is not started again
    assert store.open_calls() == []


def test_open_calls_survive_reopening_and_old_results_are_purged(tmp_path: Path) -> None:
    store = CallStore(tmp_path)
    for i, call_id in enumerate(("a", "b", "c")):
        store.accept(_call(call_id, t=float(i)))
    store.start("b", 1.0)
    store.start("c", 1.0)
    store.finish("c", 1, State.FAILED, 10.0, 502, "application/json", b"{}", "boom")
    store.close()
    reopened = CallStore(tmp_path)
    assert [(c.id, c.state) for c in reopened.open_calls()] == [
        ("a", State.QUEUED), ("b", State.RUNNING)]
    assert reopened.purge(before_s=5.0) == 0
    assert reopened.purge(before_s=11.0) == 1
    assert reopened.get("c") is None
