"""The async call record in a real SQLite file: WAL, keys, exactly-once finishing, purge,
targets of both kinds, and a record from before workflows taken over as it is."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from faasd.durable.store import Call, CallStore, Kind, State, fingerprint


def _call(call_id: str, key: str | None = None, body: bytes = b"{}", t: float = 1.0,
          kind: Kind = Kind.FUNCTION, name: str = "f") -> Call:
    return Call(id=call_id, name=name, state=State.QUEUED, body=body,
                content_type="application/json", header_length=None, callback_url=None,
                idem_key=key, fingerprint=fingerprint(name, body, "application/json", None),
                attempts=0, created_s=t, kind=kind)


def _open(store: CallStore, kind: Kind, name: str) -> int:
    """Calls to the target that are queued or running."""
    return sum(1 for c in store.open_calls() if (c.kind, c.name) == (kind, name))


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
    assert _open(store, Kind.FUNCTION, "f") == 2


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


def test_functions_and_workflows_are_targets_of_their_own(store: CallStore) -> None:
    # a workflow may take the name of a function removed earlier: its calls, keys and queue
    # count stay apart from the function's
    store.accept(_call("f1", key="k", t=1.0))
    wf = store.accept(_call("w1", key="k", t=2.0, kind=Kind.WORKFLOW))
    assert wf.id == "w1" and wf.kind is Kind.WORKFLOW  # the same key, a new call
    assert store.accept(_call("w2", key="k", t=3.0, kind=Kind.WORKFLOW)).id == "w1"
    store.accept(_call("g1", t=4.0, kind=Kind.WORKFLOW, name="g"))
    assert _open(store, Kind.FUNCTION, "f") == 1
    assert _open(store, Kind.WORKFLOW, "f") == 1
    assert _open(store, Kind.WORKFLOW, "g") == 1
    assert [c.id for c in store.recent(Kind.WORKFLOW, "f", 10)] == ["w1"]
    assert [c.id for c in store.recent(Kind.FUNCTION, "f", 10)] == ["f1"]
    assert [c.id for c in store.recent(None, "f", 10)] == ["w1", "f1"]
    assert [c.id for c in store.recent(Kind.WORKFLOW, None, 10)] == ["g1", "w1"]
    assert [c.id for c in store.recent(None, None, 2)] == ["g1", "w1"]
    got = store.get("w1")
    assert got is not None and got.kind is Kind.WORKFLOW and got.name == "f"


#: the record as daemons wrote it before workflows could be called asynchronously
OLD_SCHEMA = """
CREATE TABLE invocations(
  id TEXT PRIMARY KEY, function TEXT NOT NULL, state TEXT NOT NULL, body BLOB NOT NULL,
  content_type TEXT NOT NULL, header_length INTEGER, callback_url TEXT, idem_key TEXT,
  fingerprint TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_s REAL NOT NULL,
  started_s REAL, finished_s REAL, status_code INTEGER, result_type TEXT, result BLOB,
  error TEXT, callback_attempts INTEGER NOT NULL DEFAULT 0, callback_status TEXT);
CREATE UNIQUE INDEX inv_idem ON invocations(function, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX inv_open ON invocations(state) WHERE state IN ('queued', 'running');
CREATE INDEX inv_function ON invocations(function, created_s);
INSERT INTO invocations(id, function, state, body, content_type, idem_key, fingerprint,
                        attempts, created_s)
  VALUES ('old', 'f', 'running', x'7b7d', 'application/json', 'k', 'fp', 1, 1.0);
"""


def _opened_after(state_dir: Path, schema: str) -> CallStore:
    """The record an older daemon wrote (`schema`, with its rows), opened by this one."""
    db = sqlite3.connect(state_dir / "invocations.sqlite")
    db.executescript(schema)
    db.close()
    return CallStore(state_dir)


def test_a_record_from_before_workflows_is_taken_over(tmp_path: Path) -> None:
    store = _opened_after(tmp_path, OLD_SCHEMA)
    [old] = store.open_calls()  # the call a stopped daemon left running still runs
    assert (old.id, old.name, old.kind, old.attempts) == ("old", "f", Kind.FUNCTION, 1)
    assert store.accept(_call("again", key="k")).id == "old"  # its key still holds
    assert store.accept(_call("w", key="k", kind=Kind.WORKFLOW)).id == "w"
    store.close()
    reopened = CallStore(tmp_path)  # taken over once; opening it again changes nothing
    assert {c.id for c in reopened.open_calls()} == {"old", "w"}
    indexes = {row[0] for row in sqlite3.connect(tmp_path / "invocations.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'inv_%'")}
    assert indexes == {"inv_owner_idem", "inv_open", "inv_target"}


def test_each_callback_try_is_recorded(store: CallStore) -> None:
    store.accept(_call("a"))
    store.callback_tried("a", 1.0, "ClientConnectorError: refused", None)
    store.callback_tried("a", 2.0, "HTTP 503", None)
    store.callback_tried("a", 4.0, "HTTP 200", "HTTP 200")
    call = store.get("a")
    assert call is not None and call.callback_attempts == 3
    assert call.callback_status == "HTTP 200"
    assert call.callback_tries == ((1.0, "ClientConnectorError: refused"), (2.0, "HTTP 503"),
                                   (4.0, "HTTP 200"))


def test_keys_are_each_owners_own(store: CallStore) -> None:
    """The same key from two API tokens is two calls; from one token, one call."""
    first = store.accept(replace(_call("a", key="k"), owner="token-1"))
    assert store.accept(replace(_call("b", key="k"), owner="token-2")).id == "b"
    assert store.accept(replace(_call("c", key="k"), owner="token-1")).id == first.id
    assert store.accept(_call("d", key="k")).id == "d"  # an open API: no owner
    assert store.accept(_call("e", key="k")).id == "d"
    assert [c.id for c in store.recent(None, None, 10, owner="token-2")] == ["b"]


#: The record as the daemon of stop 27 wrote it: a call to a function left running, keyed.
STOP_27_SCHEMA = """
CREATE TABLE invocations(
  id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, body BLOB NOT NULL,
  content_type TEXT NOT NULL, header_length INTEGER, callback_url TEXT, idem_key TEXT,
  fingerprint TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_s REAL NOT NULL,
  started_s REAL, finished_s REAL, status_code INTEGER, result_type TEXT, result BLOB,
  error TEXT, callback_attempts INTEGER NOT NULL DEFAULT 0, callback_status TEXT,
  kind TEXT NOT NULL DEFAULT 'function');
CREATE UNIQUE INDEX inv_target_idem ON invocations(kind, name, idem_key)
  WHERE idem_key IS NOT NULL;
CREATE INDEX inv_open ON invocations(state) WHERE state IN ('queued', 'running');
CREATE INDEX inv_target ON invocations(kind, name, created_s);
INSERT INTO invocations(id, name, state, body, content_type, idem_key, fingerprint, attempts,
                        created_s, started_s)
  VALUES ('cut', 'f', 'running', x'7b7d', 'application/json', 'k', 'fp', 1, 1.0, 2.0);
"""


def test_a_record_from_stop_27_is_taken_over_in_one_step(tmp_path: Path) -> None:
    """Its running call may have reached a sandbox (that daemon recorded no dispatch), so a
    function that must not run twice is not run again; keys become each owner's own."""
    store = _opened_after(tmp_path, STOP_27_SCHEMA)
    [cut] = store.open_calls()
    assert cut.dispatched_s == 2.0 and cut.owner is None and not cut.v2_only
    assert store.accept(replace(_call("a", key="k"), owner="token-1")).id == "a"
    assert store.accept(replace(_call("b", key="k"), owner="token-2")).id == "b"
    store.close()
    assert CallStore(tmp_path).get("cut") == cut  # taken over once
