"""Tokens in a real SQLite file: hashed, 0600, and seen by the daemon's cache at once."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from faasd.auth.store import TokenCache, TokenError, TokenStore
from faasd.auth.tokens import Scope, authorize


def test_create_list_revoke_and_nothing_in_clear(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    record, token = store.create(Scope.ADMIN, "ops", None, 100.0)
    assert token.startswith("fdt_") and len(token) > 40
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert token.encode() not in store.path.read_bytes()
    assert [r.name for r in store.list()] == ["ops"]
    revoked = store.revoke("ops", 200.0)
    assert revoked.revoked_s == 200.0 and revoked.id == record.id
    assert store.list()[0].status(300.0) == "revoked"
    with pytest.raises(TokenError, match="no token with id or name 'nope'"):
        store.revoke("nope", 1.0)
    store.create(Scope.INVOKE, "twin", None, 1.0)
    store.create(Scope.INVOKE, "twin", None, 1.0)
    with pytest.raises(TokenError, match="2 tokens are named 'twin'; revoke one by id"):
        store.revoke("twin", 1.0)


def test_the_cache_sees_every_change_at_once(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    store = TokenStore(tmp_path)
    assert cache.records() == {}
    _, first = store.create(Scope.INVOKE, "a", None, 1.0)
    assert authorize(cache.records(), f"Bearer {first}", Scope.INVOKE, 2.0).status == 200
    # changes within the same millisecond: the header's change counter still tells
    for i in range(20):
        _, token = store.create(Scope.INVOKE, f"t{i}", None, 1.0)
        assert authorize(cache.records(), f"Bearer {token}", Scope.INVOKE, 2.0).status == 200
        store.revoke(f"t{i}", 1.5)
        assert authorize(cache.records(), f"Bearer {token}", Scope.INVOKE, 2.0).status == 401


@pytest.mark.parametrize("damage", ["delete", "garble", "empty"])
def test_the_cache_fails_closed(tmp_path: Path, damage: str,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Deleting or damaging the file never reopens an API that tokens closed."""
    cache = TokenCache(tmp_path)
    store = TokenStore(tmp_path)
    _, token = store.create(Scope.INVOKE, "a", None, 1.0)
    assert authorize(cache.records(), None, Scope.INVOKE, 2.0).status == 401
    if damage == "delete":
        store.path.unlink()
    elif damage == "garble":
        store.path.write_bytes(b"not a database at all" * 100)
    else:
        store.path.write_bytes(b"")
    assert authorize(cache.records(), None, Scope.INVOKE, 2.0).status == 401
    assert authorize(cache.records(), f"Bearer {token}", Scope.INVOKE, 2.0).status == 200
    assert "keeping the 1 token(s) already known" in caplog.text
    store.path.unlink(missing_ok=True)
    TokenStore(tmp_path).create(Scope.INVOKE, "b", None, 3.0)  # a new file is read again
    assert [r.name for r in cache.records().values()] == ["b"]


def test_a_given_token_is_recorded_once_and_must_look_like_one(tmp_path: Path) -> None:
    _, token = TokenStore(tmp_path / "first").create(Scope.ADMIN, "ops", None, 1.0)
    second = TokenStore(tmp_path / "second")
    record, same = second.create(Scope.ADMIN, "ops", None, 1.0, token=token)
    assert same == token and record.name == "ops"
    assert authorize(TokenCache(tmp_path / "second").records(), f"Bearer {token}",
                     Scope.ADMIN, 2.0).status == 200
    assert token.encode() not in second.path.read_bytes()
    with pytest.raises(TokenError, match="already on record here as 'ops'"):
        second.create(Scope.INVOKE, "again", None, 1.0, token=token)
    for bad in ("secret", "fdt_short", "fdt_" + "x" * 40 + " y", "fdt_" + "é" * 40):
        with pytest.raises(TokenError, match="not a faasd token"):
            second.create(Scope.ADMIN, None, None, 1.0, token=bad)
    assert [r.name for r in second.list()] == ["ops"]



def test_a_read_that_failed_is_tried_again(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A revocation landing while the file could not be read (caught mid-write) is not missed:
    the next request reads the same file again."""
    cache = TokenCache(tmp_path)
    store = TokenStore(tmp_path)
    _, token = store.create(Scope.INVOKE, "a", None, 1.0)
    assert authorize(cache.records(), f"Bearer {token}", Scope.INVOKE, 2.0).status == 200
    real_load = cache._load
    monkeypatch.setattr(cache, "_load", lambda: None)  # the read after the revocation fails
    store.revoke("a", 1.5)
    assert authorize(cache.records(), f"Bearer {token}", Scope.INVOKE, 2.0).status == 200
    monkeypatch.setattr(cache, "_load", real_load)  # the file unchanged, readable again
    assert authorize(cache.records(), f"Bearer {token}", Scope.INVOKE, 2.0).status == 401
