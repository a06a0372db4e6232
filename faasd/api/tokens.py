"""API tokens over HTTP (admin scope, as every `/system/*` path): `/system/tokens`.

POST `{"scope": "invoke"|"admin", "name": optional, "expires": optional "30d"}` (at most
"3650d") creates one and answers 201 with the token (the only time it is shown); GET lists
them without tokens (a stored time that is not finite shows as null); DELETE
`/system/tokens/{id or name}` revokes one. The same store as `faasd token`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.auth.store import TokenError, TokenStore
from faasd.auth.tokens import Scope, TokenRecord, json_time, parse_duration_s
from faasd.errors import BadRequest, NotFound


def _store(request: web.Request) -> TokenStore:
    return TokenStore(request.app[SERVICES].config.state_dir.resolve())


def _doc(record: TokenRecord, now_s: float) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "scope": record.scope.value,
            "created": json_time(record.created_s), "expires": json_time(record.expires_s),
            "revoked": json_time(record.revoked_s), "status": record.status(now_s)}


async def create_token(request: web.Request) -> web.Response:
    try:
        doc = json.loads(await request.read() or b"{}")
    except ValueError:
        raise BadRequest('send {"scope": "invoke" or "admin", "name": ..., "expires": "30d"}'
                         ) from None
    if not isinstance(doc, dict) or doc.get("scope") not in [s.value for s in Scope]:
        raise BadRequest('scope must be "invoke" or "admin"')
    name, expires = doc.get("name"), doc.get("expires")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 100):
        raise BadRequest("name must be text of 1 to 100 characters")
    now = request.app[SERVICES].clock.wall()
    try:
        until = None if expires is None else now + parse_duration_s(str(expires))
    except ValueError as exc:
        raise BadRequest(f"expires: {exc}") from None
    record, token = await asyncio.to_thread(_store(request).create, Scope(doc["scope"]), name,
                                            until, now)
    return json_response({**_doc(record, now), "token": token}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    now = request.app[SERVICES].clock.wall()
    records = await asyncio.to_thread(_store(request).list)
    return json_response([_doc(r, now) for r in records])


async def revoke_token(request: web.Request) -> web.Response:
    now = request.app[SERVICES].clock.wall()
    try:
        record = await asyncio.to_thread(_store(request).revoke, request.match_info["token"],
                                         now)
    except TokenError as exc:
        if "no token" in str(exc):
            raise NotFound(str(exc)) from None
        raise BadRequest(str(exc)) from None
    return json_response(_doc(record, now))
