"""The record of asynchronous calls: `invocations.sqlite` in the state directory.

SQLite in WAL mode with `synchronous=FULL`: a call's row is committed, and the commit synced to
disk, before the client gets its 202, so an accepted call survives `kill -9` of the daemon and
a power loss (as far as the disk honours fsync). Every method is blocking; the runner calls
them through `asyncio.to_thread`, one at a time (one connection, one lock), except
`mark_dispatched`, which must be on disk before the sandbox gets the call and so runs on the
event loop, inside the dispatch (only for functions that must not run twice).

A call's target is a function or a workflow (`Kind`; the two never share a name while both
are deployed, but one may take the other's name later, so the record keeps both). States:
queued → running → succeeded | failed. A row leaves `running` only through `finish`, guarded
by its attempt number, so a call completes exactly once even when a run that the daemon's
restart cut short is retried. Idempotency keys are unique per target and per owner (the API
token that made the call).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

FILE_NAME = "invocations.sqlite"

_TABLE = """
CREATE TABLE IF NOT EXISTS invocations(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  state TEXT NOT NULL,
  body BLOB NOT NULL,
  content_type TEXT NOT NULL,
  header_length INTEGER,
  callback_url TEXT,
  idem_key TEXT,
  fingerprint TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_s REAL NOT NULL,
  started_s REAL,
  finished_s REAL,
  status_code INTEGER,
  result_type TEXT,
  result BLOB,
  error TEXT,
  callback_attempts INTEGER NOT NULL DEFAULT 0,
  callback_status TEXT,
  kind TEXT NOT NULL DEFAULT 'function',
  dispatched_s REAL,
  callback_tries TEXT,
  v2_only INTEGER NOT NULL DEFAULT 0,
  result_headers TEXT,
  owner TEXT
);
"""

_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS inv_owner_idem ON invocations(kind, name, COALESCE(owner, ''),
  idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS inv_open ON invocations(state)
  WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS inv_target ON invocations(kind, name, created_s);
"""

#: A record written before workflows could be called asynchronously: every call in it was a
#: function's, named in a `function` column, with keys and listings indexed by that column.
_FROM_FUNCTIONS_ONLY = """
ALTER TABLE invocations RENAME COLUMN function TO name;
ALTER TABLE invocations ADD COLUMN kind TEXT NOT NULL DEFAULT 'function';
DROP INDEX IF EXISTS inv_idem;
DROP INDEX IF EXISTS inv_function;
"""

#: What a record written before each of these columns existed is given: (column, SQL). A
#: call such a daemon left running may have reached a sandbox (it did not record dispatches),
#: so it counts as dispatched (`mark_dispatched`); keys became each owner's own (`owner`).
_ADDED_COLUMNS = (
    ("dispatched_s", "ALTER TABLE invocations ADD COLUMN dispatched_s REAL;\n"
                     "UPDATE invocations SET dispatched_s = COALESCE(started_s, created_s) "
                     "WHERE state = 'running';\n"),
    ("callback_tries", "ALTER TABLE invocations ADD COLUMN callback_tries TEXT;\n"),
    ("v2_only", "ALTER TABLE invocations ADD COLUMN v2_only INTEGER NOT NULL DEFAULT 0;\n"),
    ("result_headers", "ALTER TABLE invocations ADD COLUMN result_headers TEXT;\n"),
    ("owner", "ALTER TABLE invocations ADD COLUMN owner TEXT;\n"
              "DROP INDEX IF EXISTS inv_target_idem;\n"),
)


class StoreClosed(RuntimeError):
    """The daemon closed the record (it is stopping)."""


class QueueFull(Exception):
    """The target already has `count` calls queued or running, the most it takes."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} calls queued or running")
        self.count = count


class Kind(StrEnum):
    """What an async call runs: one function, or a workflow (a DAG of functions)."""

    FUNCTION = "function"
    WORKFLOW = "workflow"


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def fingerprint(name: str, body: bytes, content_type: str,
                header_length: int | None, v2_only: bool = False) -> str:
    """What makes two calls to one target "the same call" for an idempotency key (keys are
    unique per target, so its kind need not be part of it). The V2 inference path answers a
    body otherwise than `/function/` does, so a call there is another call."""
    h = hashlib.sha256()
    parts = [name.encode(), content_type.encode(), str(header_length).encode()]
    if v2_only:
        parts.append(b"v2")
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True)
class Call:
    """One async call to the function or workflow `name` (`kind`), as recorded. Times are
    Unix seconds; `result` is the response body."""

    id: str
    name: str
    state: State
    body: bytes
    content_type: str
    header_length: int | None
    callback_url: str | None
    idem_key: str | None
    fingerprint: str
    attempts: int
    created_s: float
    started_s: float | None = None
    finished_s: float | None = None
    status_code: int | None = None
    result_type: str | None = None
    result: bytes | None = None
    error: str | None = None
    callback_attempts: int = 0
    callback_status: str | None = None
    kind: Kind = Kind.FUNCTION
    #: when a run first handed the call to a sandbox (None: no run got that far)
    dispatched_s: float | None = None
    #: each callback try, in order: (Unix seconds, "HTTP 503" or the connection error)
    callback_tries: tuple[tuple[float, str], ...] = ()
    #: made on the V2 inference path: V2 requests only, answered with the model's tensors
    v2_only: bool = False
    #: the answer's headers a replay gives back besides its type (V2 header length, where and
    #: how it ran)
    result_headers: tuple[tuple[str, str], ...] = ()
    #: the id of the API token that made the call (None: made while the API was open); its
    #: idempotency keys are its own, and an invoke token sees only its own calls
    owner: str | None = None

    @property
    def done(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED)


_COLUMNS = ("id, name, state, body, content_type, header_length, callback_url, idem_key, "
            "fingerprint, attempts, created_s, started_s, finished_s, status_code, "
            "result_type, result, error, callback_attempts, callback_status, kind, dispatched_s, "
            "callback_tries, v2_only, result_headers, owner")


def _call(row: tuple[object, ...]) -> Call:
    values = list(row)
    values[2] = State(str(values[2]))
    values[3] = bytes(values[3])  # type: ignore[call-overload]
    if values[15] is not None:
        values[15] = bytes(values[15])  # type: ignore[call-overload]
    values[19] = Kind(str(values[19]))
    values[21] = tuple((float(at), str(what)) for at, what in json.loads(str(values[21] or "[]")))
    values[22] = bool(values[22])
    values[23] = tuple((str(k), str(v)) for k, v in json.loads(str(values[23] or "{}")).items())
    return Call(*values)  # type: ignore[arg-type]


class CallStore:
    """Blocking access to the record; thread-safe (one connection behind a lock)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=5.0)
        self._lock = threading.Lock()
        self._closed = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_TABLE)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(invocations)")}
        if "kind" not in columns:
            # one transaction: a daemon killed halfway finds the old record, and migrates again
            self._db.executescript(f"BEGIN IMMEDIATE;\n{_FROM_FUNCTIONS_ONLY}COMMIT;")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(invocations)")}
        added = "".join(sql for column, sql in _ADDED_COLUMNS if column not in columns)
        if added:  # one transaction, for the reason above
            self._db.executescript(f"BEGIN IMMEDIATE;\n{added}COMMIT;")
        self._db.executescript(_INDEXES)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreClosed("the call record is closed: the daemon is stopping")
        return self._db

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> Iterator[Call]:
        with self._lock:
            rows = self._conn().execute(sql, args).fetchall()
        return (_call(r) for r in rows)

    def accept(self, call: Call, limit: int | None = None) -> Call:
        """Record `call` (queued) and sync it; if its idempotency key is taken, the call that
        holds it instead (the caller compares fingerprints). QueueFull when the target has
        `limit` calls queued or running: counted and inserted in one transaction, so calls
        accepted at once cannot pass the limit together. A replay is no new call: it is
        answered whatever the count."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                held = None if call.idem_key is None else db.execute(
                    f"SELECT {_COLUMNS} FROM invocations WHERE kind = ? AND name = ? AND "
                    "COALESCE(owner, '') = ? AND idem_key = ?",
                    (call.kind.value, call.name, call.owner or "", call.idem_key)).fetchone()
                if held is None:
                    if limit is not None and (
                            count := self._open_count(call.kind, call.name)) >= limit:
                        raise QueueFull(count)
                    db.execute(  # what a run adds later starts as the table's default
                        "INSERT INTO invocations(id, name, state, body, content_type, "
                        "header_length, callback_url, idem_key, fingerprint, created_s, kind, "
                        "v2_only, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (call.id, call.name, State.QUEUED.value, call.body, call.content_type,
                         call.header_length, call.callback_url, call.idem_key,
                         call.fingerprint, call.created_s, call.kind.value, int(call.v2_only),
                         call.owner))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return call if held is None else _call(held)

    def get(self, call_id: str) -> Call | None:
        return next(self._rows(f"SELECT {_COLUMNS} FROM invocations WHERE id = ?",
                               (call_id,)), None)

    def recent(self, kind: Kind | None, name: str | None, limit: int,
               owner: str | None = None) -> list[Call]:
        """The latest `limit` calls, newest first; only those of `kind` and `name` where given
        (a name alone: a function's calls and those of a workflow that had its name), and of
        `owner` where given."""
        where: list[str] = []
        args: list[object] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind.value)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return list(self._rows(f"SELECT {_COLUMNS} FROM invocations {clause}ORDER BY "
                               "created_s DESC LIMIT ?", (*args, limit)))

    def open_calls(self) -> list[Call]:
        """Queued and running calls, oldest first (what a restarted daemon must finish)."""
        return list(self._rows(f"SELECT {_COLUMNS} FROM invocations WHERE state IN "
                               "('queued', 'running') ORDER BY created_s"))

    def undelivered(self) -> list[Call]:
        return list(self._rows(f"SELECT {_COLUMNS} FROM invocations WHERE state IN "
                               "('succeeded', 'failed') AND callback_url IS NOT NULL AND "
                               "callback_status IS NULL ORDER BY finished_s"))

    def _open_count(self, kind: Kind, name: str) -> int:
        """Calls to the target that are queued or running (the caller holds the lock)."""
        (count,) = self._conn().execute(
            "SELECT COUNT(*) FROM invocations WHERE kind = ? AND name = ? AND state IN "
            "('queued', 'running')", (kind.value, name)).fetchone()
        return int(count)

    def start(self, call_id: str, now_s: float) -> int:
        """Mark the call running; its attempt number (1 for the first run)."""
        with self._lock:
            self._conn().execute(
                "UPDATE invocations SET state = 'running', attempts = attempts + 1, "
                "started_s = ? WHERE id = ? AND state IN ('queued', 'running')", (now_s, call_id))
            (attempts,) = self._conn().execute("SELECT attempts FROM invocations WHERE id = ?",
                                           (call_id,)).fetchone()
        return int(attempts)

    def mark_dispatched(self, call_id: str, now_s: float) -> None:
        """Record, synced, that a run handed the call to a sandbox: from here on a run cut
        short may have had effects (what a function that is not idempotent must not repeat).
        The first mark stays."""
        with self._lock:
            self._conn().execute(
                "UPDATE invocations SET dispatched_s = ? WHERE id = ? AND dispatched_s IS NULL",
                (now_s, call_id))

    def finish(self, call_id: str, attempt: int, state: State, now_s: float, status_code: int,
               result_type: str | None, result: bytes | None, error: str | None,
               result_headers: Mapping[str, str] | None = None) -> bool:
        """Record the outcome of run `attempt`; False if the call was already finished."""
        headers = json.dumps(dict(result_headers)) if result_headers else None
        with self._lock:
            cursor = self._conn().execute(
                "UPDATE invocations SET state = ?, finished_s = ?, status_code = ?, "
                "result_type = ?, result = ?, error = ?, result_headers = ? WHERE id = ? AND "
                "state = 'running' AND attempts = ?",
                (state.value, now_s, status_code, result_type, result, error, headers, call_id,
                 attempt))
        return cursor.rowcount == 1

    def callback_tried(self, call_id: str, at_s: float, outcome: str,
                       final: str | None) -> None:
        """Record one callback try (`outcome`: "HTTP 200", or the error), and the callback's
        final status once it is settled (`final`; None while tries remain)."""
        with self._lock:
            db = self._conn()
            (raw,) = db.execute("SELECT callback_tries FROM invocations WHERE id = ?",
                                (call_id,)).fetchone() or (None,)
            tries = [*json.loads(raw or "[]"), [at_s, outcome[:300]]]
            db.execute("UPDATE invocations SET callback_attempts = ?, callback_status = ?, "
                       "callback_tries = ? WHERE id = ?",
                       (len(tries), final, json.dumps(tries), call_id))

    def callback_settled(self, call_id: str, final: str) -> None:
        """The callback's final status, when no try is left to record (a restart found its
        tries used up)."""
        with self._lock:
            self._conn().execute("UPDATE invocations SET callback_status = ? WHERE id = ?",
                                 (final, call_id))

    def purge(self, before_s: float) -> int:
        """Delete finished calls that ended before `before_s`; how many."""
        with self._lock:
            cursor = self._conn().execute("DELETE FROM invocations WHERE state IN ('succeeded', "
                                      "'failed') AND finished_s < ?", (before_s,))
        return cursor.rowcount
