"""`faasd invocations [NAME]` and `faasd result ID`: async calls (to functions and workflows)
seen from the CLI."""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from faasd.client import Client, ClientError, Reply

ClientFor = Callable[[argparse.Namespace], Client]


def add_invocation_commands(client_command: Callable[..., Any], client: ClientFor) -> None:
    """Register the commands; `client_command` is the CLI's helper for a client command."""
    p = client_command("invocations", "list recent async calls (of one function or workflow)",
                       functools.partial(_listing, client))
    p.add_argument("name", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p = client_command("result", "print an async call's answer (-o json: its record)",
                       functools.partial(_result, client))
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="wait until the call has an answer")
    p.add_argument("--wait-s", type=float, default=300.0, help="at most this long (--wait)")


def _listing(client: ClientFor, args: argparse.Namespace) -> int:
    path = "/system/invocations?limit=" + str(args.limit)
    if args.name:
        path += f"&name={urllib.parse.quote(args.name)}"
    calls = client(args).json("GET", path)
    if args.output == "json":
        print(json.dumps(calls, indent=2))
        return 0
    rows = [[c["id"], c[c["kind"]], c["kind"], c["status"], str(c["status_code"] or "-"),
             _when(c["created"]), "-" if c["duration_s"] is None
             else f"{c['duration_s'] * 1000:.1f} ms", str(c["attempts"])] for c in calls]
    header = ["ID", "NAME", "KIND", "STATUS", "CODE", "CREATED", "RAN", "RUNS"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _result(client: ClientFor, args: argparse.Namespace) -> int:
    c = client(args)
    if args.output == "json":
        print(json.dumps(c.json("GET", f"/system/invocations/{args.id}"), indent=2))
        return 0
    deadline = time.monotonic() + (args.wait_s if args.wait else 0.0)
    reply = _answer(c, args.id)
    while reply.status == 202 and time.monotonic() < deadline:
        time.sleep(0.1)
        reply = _answer(c, args.id)
    if reply.status == 202:
        raise ClientError(f"call {args.id} has not finished yet; try again shortly "
                          "(or pass --wait)")
    sys.stdout.buffer.write(reply.body)
    if sys.stdout.isatty() and not reply.body.endswith(b"\n"):
        sys.stdout.write("\n")
    return 0


def _answer(client: Client, call_id: str) -> Reply:
    try:
        return client.request("GET", f"/system/invocations/{call_id}/result")
    except ClientError as exc:
        if exc.status is not None and exc.status != 404:  # the call's own failure
            raise ClientError(f"call {call_id} failed: {exc.message}") from None
        raise


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%H:%M:%S")
