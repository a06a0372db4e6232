"""Every error leaves the daemon as JSON `{"error": ...}` with its status, in one place.

`FaasdError`s carry their status (and Retry-After for 429/503); aiohttp's own 404, 405 and 413
are rewritten the same way, and anything unexpected becomes a logged 500 — tritonclient and
curl users always get a body they can parse. An answer's text is bounded (`MAX_ERROR_CHARS`):
a message that repeats what a client sent cannot grow with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from faasd.api.keys import SERVICES
from faasd.api.strict_json import dumps
from faasd.errors import FaasdError, Overloaded, clip

log = logging.getLogger("faasd.api")

#: The most characters of an error's message, or of a text field beside it, an answer carries:
#: long enough for any message faasd writes (a list of not-ready functions, say), and a bound
#: on one that quotes, unclipped, a name a client sent.
MAX_ERROR_CHARS = 4000


def error_response(
    status: int,
    message: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    doc: dict[str, Any] = {"error": clip(message, MAX_ERROR_CHARS)}
    doc.update({k: clip(v, MAX_ERROR_CHARS) if isinstance(v, str) else v
                for k, v in (extra or {}).items() if v is not None})
    return web.Response(
        status=status,
        body=dumps(doc).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def render_error(exc: FaasdError, headers: Mapping[str, str] | None = None) -> web.Response:
    out = dict(headers or {})
    if isinstance(exc, Overloaded):
        out["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return error_response(exc.status, exc.message, exc.extra, out)


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no route for {request.method} {request.path}; see the API table in the README"
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ())))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if exc.status == 413:
        limit = request.app[SERVICES].config.max_body_mb if SERVICES in request.app else None
        suffix = f" of {limit} MiB" if limit else ""
        return f"request body exceeds the limit{suffix}; send a smaller body or raise max_body_mb"
    return exc.reason


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FaasdError as exc:
        return render_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, _http_message(exc, request), headers=headers)
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # bad gzip, cut chunks
        reason = str(exc).splitlines()[-1].strip() if str(exc) else type(exc).__name__
        return error_response(400, f"the request body cannot be read ({reason}); check its "
                                   "Content-Encoding and length")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal error in faasd; see the daemon's log")
