"""The aiohttp middleware that applies `faasd.auth.tokens.authorize` to every request.

It decides on method and path before the route's handler runs, so it covers every route,
those added later included (`AccessRules` sends any path it does not name to admin). A 401
carries `WWW-Authenticate: Bearer` (RFC 6750); 401 and 403 are JSON like every error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from faasd.api.errors import error_response
from faasd.auth.store import TokenCache
from faasd.auth.tokens import AccessRules, TokenRecord, authorize

log = logging.getLogger("faasd.auth")


@dataclass(frozen=True)
class Access:
    """`extra` are tokens held in memory (the cluster's own, see `cluster_token`); they count
    only once the store holds a token: they never close an API that no token has closed."""

    cache: TokenCache
    rules: AccessRules
    now_s: Callable[[], float]
    extra: Mapping[str, TokenRecord] = field(default_factory=dict)

    def records(self) -> Mapping[str, TokenRecord]:
        stored = self.cache.records()
        return {**stored, **self.extra} if stored and self.extra else stored


ACCESS = web.AppKey("access", Access)
#: The token a request was let through with (absent: no token on record, the API is open).
CALLER = web.RequestKey("caller", TokenRecord)


def caller(request: web.Request) -> TokenRecord | None:
    return request.get(CALLER)


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = request.app.get(ACCESS)
    if access is None:
        return await handler(request)
    required = access.rules.required(request.method, request.path)
    verdict = authorize(access.records(), request.headers.get("Authorization"),
                        required, access.now_s())
    if verdict.status == 200:
        if verdict.token is not None:
            request[CALLER] = verdict.token
        return await handler(request)
    # the token's name only, never the token or its digest
    log.info("%s %s refused (%d)%s", request.method, request.path, verdict.status,
             f" for token {verdict.token.name!r}" if verdict.token else "")
    headers = {"WWW-Authenticate": 'Bearer realm="faasd"'} if verdict.status == 401 else {}
    return error_response(verdict.status, verdict.message, headers=headers)
