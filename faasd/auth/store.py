"""Tokens on disk: `tokens.sqlite` in the state directory, written by `faasd token ...`.

The file holds digests only (see `faasd.auth.tokens`) and is created mode 0600. It uses
SQLite's rollback journal, not WAL, so that every commit rewrites the database header's
change counter (bytes 24-27): `TokenCache` reads those four bytes (and the file's inode) on
each request and reloads the records only when they changed. A token created or revoked by
the CLI therefore counts from the daemon's next request, without a restart or a poll interval.

The cache fails closed: once it has seen a token, a file that vanishes, or that cannot be read
or holds no token any more, keeps the records it knew (with a warning), so deleting or
damaging the file never reopens an API that tokens had closed. A restart starts afresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

from faasd.auth.tokens import TOKEN_PREFIX, Scope, TokenRecord, digest

log = logging.getLogger("faasd.auth")

FILE_NAME = "tokens.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  scope TEXT NOT NULL,
  digest TEXT NOT NULL UNIQUE,
  created_s REAL NOT NULL,
  expires_s REAL,
  revoked_s REAL
)
"""
_COLUMNS = "id, name, scope, digest, created_s, expires_s, revoked_s"


class TokenError(ValueError):
    """A token command that cannot be done (unknown id, ambiguous name); the message says why."""


def _record(row: tuple[object, ...]) -> TokenRecord:
    id_, name, scope, dig, created, expires, revoked = row
    return TokenRecord(str(id_), str(name), Scope(str(scope)), str(dig), float(str(created)),
                       None if expires is None else float(str(expires)),
                       None if revoked is None else float(str(revoked)))


class TokenStore:
    """Create, list and revoke tokens in `state_dir/tokens.sqlite` (the CLI's side)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            with db:
                yield db
        finally:
            db.close()

    def create(self, scope: Scope, name: str | None, expires_s: float | None,
               now_s: float, token: str | None = None) -> tuple[TokenRecord, str]:
        """A new token and its record; the token itself exists only in the return value.
        `token`: record that one instead of a fresh one (the same token on every node of a
        cluster); it must look like one this store makes."""
        if token is None:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        elif not _well_formed(token):
            raise TokenError(f"not a faasd token: it must be {TOKEN_PREFIX!r} and at least "
                             f"{_MIN_SECRET_CHARS} more letters, digits, '-' or '_' (make one "
                             "with `faasd token create` and copy it)")
        token_id = secrets.token_hex(6)
        record = TokenRecord(token_id, name or f"{scope.value}-{token_id}", scope,
                             digest(token), now_s, expires_s)
        with self._connect() as db:
            known = db.execute("SELECT name FROM tokens WHERE digest = ?",
                               (record.digest,)).fetchone()
            if known is not None:
                raise TokenError(f"this token is already on record here as {known[0]!r}")
            db.execute(f"INSERT INTO tokens({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (record.id, record.name, record.scope.value, record.digest,
                        record.created_s, record.expires_s, None))
        return record, token

    def list(self) -> list[TokenRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_s").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, ident: str, now_s: float) -> TokenRecord:
        """Revoke the token with id or name `ident` (its row stays, so the API stays closed)."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE id = ? OR name = ?",
                              (ident, ident)).fetchall()
            if not rows:
                raise TokenError(f"no token with id or name {ident!r}; see `faasd token list`")
            if len(rows) > 1:
                ids = ", ".join(str(r[0]) for r in rows)
                raise TokenError(f"{len(rows)} tokens are named {ident!r}; revoke one by id "
                                 f"({ids})")
            record = _record(rows[0])
            if record.revoked_s is None:
                db.execute("UPDATE tokens SET revoked_s = ? WHERE id = ?", (now_s, record.id))
        return _record((*rows[0][:6], record.revoked_s or now_s))


_HEADER_COUNTER = 24  # the SQLite header's file change counter, 4 bytes big-endian


class TokenCache:
    """The daemon's read side: every record by digest, reloaded when the file changed."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._signature: tuple[int, ...] | None = None
        self._warned_for: tuple[int, ...] | None = None
        self._records: Mapping[str, TokenRecord] = {}

    def records(self) -> Mapping[str, TokenRecord]:
        signature = self._signature_now()
        if signature != self._signature:
            loaded = self._load() if signature else None
            if loaded:
                self._records = loaded
            elif self._records and signature != self._warned_for:
                self._warned_for = signature
                log.warning("%s %s; keeping the %d token(s) already known, so the API stays "
                            "closed (restart faasd to read the tokens afresh)", self.path,
                            "is gone" if not signature else "holds no readable token",
                            len(self._records))
            if loaded is not None or not signature:
                # a file that could not be read (caught mid-write, say) is read again at the
                # next request, so a revocation in it is not missed
                self._signature = signature
        return self._records

    def _signature_now(self) -> tuple[int, ...]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return ()
        try:
            st = os.fstat(fd)
            counter = os.pread(fd, 4, _HEADER_COUNTER)
        finally:
            os.close(fd)
        return (st.st_ino, st.st_size, st.st_mtime_ns, int.from_bytes(counter or b"\0", "big"))

    def _load(self) -> dict[str, TokenRecord] | None:
        """The records; None when the file cannot be read (or its table is not there yet)."""
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error:
            return None
        try:
            rows = db.execute(f"SELECT {_COLUMNS} FROM tokens").fetchall()
        except sqlite3.Error:  # created, table not there yet; or not a database
            return None
        finally:
            db.close()
        return {str(row[3]): _record(row) for row in rows}


#: a fresh token's secret is 43 characters (32 random bytes); a given one needs at least this
_MIN_SECRET_CHARS = 32


def _well_formed(token: str) -> bool:
    secret = token.removeprefix(TOKEN_PREFIX)
    return (token.startswith(TOKEN_PREFIX) and len(secret) >= _MIN_SECRET_CHARS
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in secret))
