"""Bearer tokens, scopes and the access rules of the HTTP API. Pure: time is an argument.

A token is `fdt_` + 43 URL-safe characters (256 random bits). Only its SHA-256 digest is
stored; a presented token is hashed and looked up by digest. Looking up a digest in a dict
leaks at most how many leading bytes of a SHA-256 digest matched, which says nothing about
any token, so no constant-time comparison is needed past the hash.

Scopes are ordered: `admin` may do everything `invoke` may. With no token on record the API is
open (a loopback-only daemon, as before tokens existed); once any token has been created,
revoked and expired ones included, every path but the health checks needs a live token, so
revoking the last token never opens the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from faasd.errors import clip

TOKEN_PREFIX = "fdt_"


class Scope(StrEnum):
    INVOKE = "invoke"
    ADMIN = "admin"


_RANK = {Scope.INVOKE: 1, Scope.ADMIN: 2}

#: Who may read /metrics: an admin token (default), any token, or anyone.
METRICS_ACCESS = ("admin", "invoke", "open")


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: never the token itself, only its digest. Times are Unix seconds."""

    id: str
    name: str
    scope: Scope
    digest: str
    created_s: float
    expires_s: float | None = None
    revoked_s: float | None = None

    def status(self, now_s: float) -> str:
        if self.revoked_s is not None:
            return "revoked"
        if self.expires_s is not None and now_s >= self.expires_s:
            return "expired"
        return "live"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def cluster_token(gossip_key: str) -> str:
    """The admin token the nodes of one cluster present to each other (pulling a deployed
    function, say): derived from the gossip key every node already holds, so a cluster needs
    no second secret, and a leaked API token does not give node-to-node access. Pure."""
    mac = hmac.new(base64.b64decode(gossip_key), b"faasd cluster admin token",
                   hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def cluster_record(token: str) -> TokenRecord:
    """`token` (see `cluster_token`) as an admin token on record, kept in memory only."""
    return TokenRecord("cluster", "cluster", Scope.ADMIN, digest(token), 0.0)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest lifetime a token may be given (longer is as good as never: give none).
MAX_LIFETIME_S = 3650 * 86400
_LIFETIME_TEXT = "10 years (3650d)"


def parse_duration_s(text: str) -> float:
    """`90s`, `15m`, `12h`, `30d`, `2w` or plain seconds, as seconds, up to
    `MAX_LIFETIME_S`; ValueError otherwise (an absurd lifetime is refused here, before any
    token is stored, so no expiry past the calendar's range ever reaches the record)."""
    shown = clip(text, 40)
    match = _DURATION.match(text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{shown!r} is not a duration; write e.g. 30d, 12h, 15m or 3600s")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not seconds <= MAX_LIFETIME_S:
        raise ValueError(f"{shown!r} is longer than {_LIFETIME_TEXT}, the longest a token may "
                         "live; write e.g. 365d, or give no expiry for a token that never "
                         "expires")
    return seconds


def json_time(seconds: float | None) -> float | None:
    """A stored time as JSON may carry it: None for a value that is not finite (a record
    written before lifetimes were bounded, or edited by hand), which for an expiry means
    what it did, never (`TokenRecord.status` never calls such a token expired)."""
    return seconds if seconds is not None and math.isfinite(seconds) else None


@dataclass(frozen=True)
class AccessRules:
    """Which scope each request needs, decided by method and path alone (never by whether a
    function exists, so a 401 or 403 reveals nothing about what is deployed).

    Open: `/healthz`, `/v2/health/*`. Invoke: calling functions and workflows (sync and async),
    the V2 model paths, `/v2`, and reading invocation results. Admin: everything else —
    `/system/*` (deploy, remove, list), `/metrics` unless `metrics` says otherwise, and any path
    added later that these rules do not name, so a new route is never open by accident.
    """

    metrics: str = "admin"

    INVOKE_PREFIXES = ("/function/", "/async-function/", "/workflow/", "/async-workflow/",
                       "/v2/models/")
    READ_RESULT_PREFIX = "/system/invocations"

    def required(self, method: str, path: str) -> Scope | None:
        if path == "/healthz" or path.startswith("/v2/health/"):
            return None
        if path == "/metrics":
            return None if self.metrics == "open" else Scope(self.metrics)
        if path.startswith(self.INVOKE_PREFIXES) or path == "/v2":
            return Scope.INVOKE
        if method in ("GET", "HEAD") and (
            path == self.READ_RESULT_PREFIX or path.startswith(self.READ_RESULT_PREFIX + "/")
        ):
            return Scope.INVOKE
        return Scope.ADMIN


@dataclass(frozen=True)
class Verdict:
    """`status` 200 (go on), 401 (no usable token) or 403 (a token of too small a scope)."""

    status: int
    message: str = ""
    token: TokenRecord | None = None


_HOW = ("create one with `faasd token create --scope {scope}` on the daemon's host and send "
        "it as `Authorization: Bearer TOKEN` (the faasd CLI reads $FAASD_TOKEN or --token-file)")


def authorize(
    records: Mapping[str, TokenRecord],
    authorization: str | None,
    required: Scope | None,
    now_s: float,
) -> Verdict:
    """The verdict on one request. `records` maps digests to records (every token on record);
    `authorization` is the request's Authorization header. Messages never repeat the token."""
    if required is None or not records:
        return Verdict(200)
    how = _HOW.format(scope=required.value)
    if not authorization:
        return Verdict(401, f"this path needs an API token: {how}")
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return Verdict(401, f"the Authorization header must be `Bearer TOKEN`: {how}")
    record = records.get(digest(presented.strip()))
    state = "unknown" if record is None else record.status(now_s)
    if record is None or state == "revoked":
        return Verdict(401, f"the bearer token is unknown or revoked: {how}")
    if state == "expired":
        return Verdict(401, f"the bearer token {record.name!r} has expired: {how}")
    if _RANK[record.scope] < _RANK[required]:
        return Verdict(
            403,
            f"the token {record.name!r} has scope {record.scope.value}; this path needs an "
            f"{required.value} token",
            record,
        )
    return Verdict(200, token=record)


def is_loopback(host: str) -> bool:
    """True when listening on `host` reaches only this machine (127.0.0.0/8, ::1, localhost).
    Any other name or address, the empty host and 0.0.0.0 included, is exposed."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_error(host: str, records: Mapping[str, TokenRecord], now_s: float,
                   state_dir: str) -> str | None:
    """Why the daemon must not listen on `host`, or None: a non-loopback address needs at least
    one live token, else anyone who reaches the port could deploy code."""
    if is_loopback(host) or any(r.status(now_s) == "live" for r in records.values()):
        return None
    return (f"faasd will not listen on {host or 'every address'} without an API token; create "
            f"one with `faasd token create --scope admin --state-dir {state_dir}`, or listen on "
            "127.0.0.1")
