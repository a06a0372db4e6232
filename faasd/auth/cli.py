"""`faasd token create|list|revoke`: tokens in the daemon's state directory.

These commands work on the state directory's `tokens.sqlite` directly (no daemon needed, and
the daemon picks changes up on its next request). The state directory is `--state-dir`, else
the one `--config` names, else the installed daemon's (`/etc/faasd/faasd.yaml`), else the
default `state`. `create` prints the token once, as the last word of its last line;
`create --token-file F` records the token in F instead (the same token on every node of a
cluster: each node keeps its own tokens) and prints nothing secret.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from faasd.auth.store import TokenError, TokenStore
from faasd.auth.tokens import Scope, TokenRecord, json_time, parse_duration_s


def add_token_commands(sub: Any) -> None:
    token = sub.add_parser("token", help="create, list and revoke API tokens")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=help_text)
        p.add_argument("--state-dir", type=Path, help="the daemon's state directory")
        p.add_argument("--config", type=Path, help="faasd.yaml naming the state directory")
        return p

    create = verb("create", "create a token and print it (once)")
    create.add_argument("--scope", choices=[s.value for s in Scope], required=True)
    create.add_argument("--name", help="a label for people (default: scope-id)")
    create.add_argument("--expires", help="lifetime, e.g. 30d, 12h, 15m, at most 3650d "
                                          "(default: never)")
    create.add_argument("--token-file", type=Path,
                        help="record the token in this file (its first line) instead of a new "
                             "one: the same token on every node of a cluster")
    create.set_defaults(func=_create)
    listing = verb("list", "list tokens (never the tokens themselves)")
    listing.add_argument("-o", "--output", choices=("table", "json"), default="table")
    listing.set_defaults(func=_list)
    revoke = verb("revoke", "revoke a token by id or name")
    revoke.add_argument("token")
    revoke.set_defaults(func=_revoke)


def read_client_token(token_file: Path | None) -> str | None:
    """The token the CLI sends: the first line of `--token-file`, else $FAASD_TOKEN."""
    if token_file is not None:
        text = token_file.read_text().strip()
        return text.splitlines()[0].strip() if text else None
    return os.environ.get("FAASD_TOKEN", "").strip() or None


def _store(args: argparse.Namespace, *, existing: bool = False) -> TokenStore:
    """The token store of the state directory `args` name. `existing`: the directory must
    be there already (listing or revoking in a mistyped one must not make an empty one and
    report no tokens); `create` makes it, as a first token is made before the daemon ran."""
    if args.state_dir is not None:
        state_dir = args.state_dir
    else:
        from faasd.config import load_config
        from faasd.install import CONFIG_PATH

        path = args.config or (CONFIG_PATH if CONFIG_PATH.exists() else None)
        state_dir = load_config(path).state_dir
    if existing and not state_dir.is_dir():
        raise TokenError(f"the state directory {state_dir} does not exist; pass the daemon's "
                         "--state-dir (or the --config that names it)")
    return TokenStore(state_dir)


def _when(seconds: float | None) -> str:
    """A stored time for people; any value a record may hold, even one no date can show."""
    if seconds is None:
        return "never"
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M UTC")
    except (OverflowError, ValueError, OSError):
        if math.isnan(seconds):
            return "unknown"
        return "after 9999-12-31" if seconds > 0 else "before 0001-01-01"


def _create(args: argparse.Namespace) -> int:
    try:
        lifetime = None if args.expires is None else parse_duration_s(args.expires)
    except ValueError as exc:
        raise TokenError(f"--expires: {exc}") from None
    given = None
    if args.token_file is not None:
        try:
            given = read_client_token(args.token_file)
        except OSError as exc:
            raise TokenError(f"--token-file: cannot read {args.token_file}: "
                             f"{exc.strerror or exc}") from None
        if given is None:
            raise TokenError(f"--token-file: {args.token_file} is empty")
    now = time.time()
    store = _store(args)
    record, token = store.create(Scope(args.scope), args.name, None if lifetime is None
                                 else now + lifetime, now, token=given)
    if given is not None:
        print(f"recorded the {record.scope.value} token of {args.token_file} as "
              f"{record.name!r} (id {record.id}, expires {_when(record.expires_s)}) in "
              f"{store.path}")
        return 0
    print(f"created {record.scope.value} token {record.name!r} (id {record.id}, expires "
          f"{_when(record.expires_s)}) in {store.path}; it is shown only now:")
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    now = time.time()
    store = _store(args, existing=True)
    records = store.list() if store.path.exists() else []
    if args.output == "json":
        print(json.dumps([_doc(r, now) for r in records], indent=2, allow_nan=False))
        return 0
    rows = [[r.id, r.name, r.scope.value, _when(r.created_s), _when(r.expires_s),
             r.status(now)] for r in records]
    header = ["ID", "NAME", "SCOPE", "CREATED", "EXPIRES", "STATUS"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _doc(record: TokenRecord, now: float) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "scope": record.scope.value,
            "created_s": json_time(record.created_s), "expires_s": json_time(record.expires_s),
            "revoked_s": json_time(record.revoked_s), "status": record.status(now)}


def _revoke(args: argparse.Namespace) -> int:
    store = _store(args, existing=True)
    if not store.path.exists():
        raise TokenError(f"no tokens in {store.path.parent} (it has no {store.path.name}); "
                         "see `faasd token list`")
    record = store.revoke(args.token, time.time())
    print(f"revoked token {record.name!r} (id {record.id}); the daemon refuses it from its next "
          "request")
    return 0
