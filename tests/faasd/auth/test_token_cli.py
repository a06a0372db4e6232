"""`faasd token` (the real CLI entry, in-process) on lifetimes it cannot store, on any value a
record may hold, and on a state directory that is not there."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from faasd.auth.store import TokenStore
from faasd.auth.tokens import Scope
from faasd.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["token", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _strict(text: str) -> object:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


@pytest.mark.parametrize("expires", ["99999999d", "9" * 400 + "w"])
def test_an_absurd_lifetime_is_refused_before_anything_is_stored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], expires: str) -> None:
    """Before, the token was stored, then printing its expiry (year 275817) crashed, the
    token was never shown, and every later `token list` crashed on it."""
    code, out, err = _run(capsys, "create", "--scope", "invoke", "--expires", expires,
                          "--state-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert "longer than 10 years (3650d)" in err and len(err) < 400
    code, out, _ = _run(capsys, "list", "--state-dir", str(tmp_path))
    assert code == 0 and out.splitlines()[1:] == []


def test_any_stored_time_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Records written before lifetimes were bounded: an Infinity expiry (from the API) and
    one in year 275817 (from the CLI), revoked or not."""
    store = TokenStore(tmp_path)
    now = time.time()
    store.create(Scope.INVOKE, "forever", math.inf, now)
    store.create(Scope.INVOKE, "far", now + 99999999 * 86400, now)
    store.create(Scope.ADMIN, "before", -1e300, now)
    store.revoke("far", now)
    code, out, err = _run(capsys, "list", "--state-dir", str(tmp_path))
    assert code == 0, err
    rows = {line.split()[1]: line for line in out.splitlines()[1:]}
    assert "after 9999-12-31" in rows["forever"] and "revoked" in rows["far"]
    assert "before 0001-01-01" in rows["before"]
    code, out, err = _run(capsys, "list", "-o", "json", "--state-dir", str(tmp_path))
    assert code == 0, err
    docs = {d["name"]: d for d in _strict(out)}  # type: ignore[attr-defined]
    assert docs["forever"]["expires_s"] is None and docs["forever"]["status"] == "live"
    assert docs["far"]["expires_s"] == pytest.approx(now + 99999999 * 86400)


@pytest.mark.parametrize("verb", [["list"], ["list", "-o", "json"], ["revoke", "ci"]])
def test_a_state_directory_that_is_not_there_is_named_not_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: list[str]) -> None:
    missing = tmp_path / "no-such-state"
    code, out, err = _run(capsys, *verb, "--state-dir", str(missing))
    assert code == 1 and out == ""
    assert f"the state directory {missing} does not exist" in err
    assert not missing.exists()


def test_list_and_revoke_in_a_state_directory_without_tokens(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "list", "--state-dir", str(tmp_path))
    assert code == 0 and out.split() == ["ID", "NAME", "SCOPE", "CREATED", "EXPIRES", "STATUS"]
    code, _, err = _run(capsys, "revoke", "ci", "--state-dir", str(tmp_path))
    assert code == 1 and "no tokens in" in err
    assert list(tmp_path.iterdir()) == []  # nothing made by looking
    code, out, _ = _run(capsys, "create", "--scope", "admin", "--state-dir",
                        str(tmp_path / "new"))
    assert code == 0 and out.split()[-1].startswith("fdt_")  # create still makes it
