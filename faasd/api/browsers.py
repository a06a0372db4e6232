"""Browser-safe loopback: a web page the user visits cannot drive the daemon.

A daemon on 127.0.0.1 without tokens trusts whoever reaches the port, and every web page the
user opens can reach it: a cross-origin `fetch` with a CORS-safelisted Content-Type
(`text/plain`, a form) is sent without a preflight, and DNS rebinding makes the page's own
name resolve to 127.0.0.1. Three rules, one middleware (`browser_guard`):

* `Host` must name the daemon: the names of the bound address (loopback: `127.0.0.1`,
  `localhost`, `::1`; a wildcard bind allows any) or an entry of `allowed_hosts` — a rebinding
  page sends its own name, and gets a 403;
* a state-changing request (POST, PUT, PATCH, DELETE) that carries an `Origin` must come from
  an allowed host on this daemon's own origin, or an entry of `allowed_origins` — else 403;
  curl and the CLI send no Origin;
* a request with a body under `/system/` may not use a CORS-safelisted type (`text/plain`,
  `application/x-www-form-urlencoded`, `multipart/form-data`) or none: 415, as only those can
  be sent cross-origin without a preflight. JSON endpoints take `application/json`.

Pure rules (`host_refusal`, `origin_refusal`, `content_type_refusal`) and a thin middleware.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from faasd.api.errors import error_response

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "localhost.localdomain"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded",
                          "multipart/form-data"})


@dataclass(frozen=True)
class BrowserPolicy:
    """Which `Host` names and `Origin`s the daemon answers. `hosts` None: any host."""

    hosts: frozenset[str] | None
    origins: frozenset[str]

    @classmethod
    def for_bind(cls, bind_host: str, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = ()) -> BrowserPolicy:
        extra = {h.lower().strip("[]") for h in allowed_hosts}
        origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        bound = bind_host.lower().strip("[]")
        if bound in WILDCARDS and not extra:
            return cls(None, origins)
        names = set(LOOPBACK_NAMES) if bound in LOOPBACK_NAMES or bound.startswith("127.") \
            else set()
        if bound not in WILDCARDS:
            names.add(bound)
        return cls(frozenset(names | extra), origins)


def host_name(host: str) -> str:
    """The name in a `Host` header value: `[::1]:8080` -> `::1`, `Example:80` -> `example`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def host_refusal(policy: BrowserPolicy, host: str | None) -> str | None:
    if policy.hosts is None or host is None:  # HTTP/1.0 without Host: no browser
        return None
    name = host_name(host)
    if name in policy.hosts:
        return None
    return (f"Host {host!r} is not a name of this daemon; use one of "
            f"{', '.join(sorted(policy.hosts))}, or add it to allowed_hosts in faasd.yaml")


def origin_refusal(policy: BrowserPolicy, method: str, origin: str | None,
                   host: str | None) -> str | None:
    if method not in STATE_CHANGING or origin is None:
        return None
    wanted = origin.rstrip("/").lower()
    if wanted in policy.origins:
        return None
    if host is not None and wanted in (f"http://{host.lower()}", f"https://{host.lower()}"):
        return None  # same origin (its Host was checked above)
    return (f"{method} from the web page at {origin} is refused: its origin is not in "
            "allowed_origins (faasd.yaml); call the API from curl, the CLI or a server")


def content_type_refusal(method: str, path: str, content_type: str,
                         has_body: bool) -> str | None:
    if method not in STATE_CHANGING or not path.startswith("/system/") or not has_body:
        return None
    mime = content_type.split(";")[0].strip().lower()
    if mime and mime not in SIMPLE_TYPES:
        return None
    return (f"{path} takes JSON: send Content-Type: application/json (curl: --json, or "
            f"-H 'Content-Type: application/json'), not {mime or 'no Content-Type'}")


BROWSERS = web.AppKey("browsers", BrowserPolicy)


@web.middleware
async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app.get(BROWSERS)
    if policy is None:
        return await handler(request)
    host = request.headers.get("Host")
    problem = host_refusal(policy, host) or origin_refusal(
        policy, request.method, request.headers.get("Origin"), host)
    if problem is not None:
        return error_response(403, problem)
    problem = content_type_refusal(request.method, request.path,
                                   request.headers.get("Content-Type", ""), request.body_exists)
    if problem is not None:
        return error_response(415, problem)
    return await handler(request)
