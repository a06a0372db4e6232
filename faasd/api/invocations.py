"""Asynchronous calls: `POST /async-function/{name}` and `/system/invocations[/{id}[/result]]`.

OpenFaaS semantics: the call is checked as a synchronous one would be (404 unknown function,
400 a body the function cannot take, 413 too large) and then recorded durably; only then the
answer is `202 Accepted` with `X-Call-Id` and `Location`. `X-Callback-Url` (http or https)
receives the answer when the call ends. `Idempotency-Key` (at most 255 characters): the same
key and body for the same function answer 202 with the first call's id (and
`X-Idempotent-Replay: true`) instead of a second call; the same key with another body is 422.
`GET /system/invocations/{id}` gives the call's status and timings, `.../result` the answer
the function gave (its status, type and body), 202 while it has none yet.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from faasd.api.errors import render_error
from faasd.api.invoke import read_body, render
from faasd.api.keys import SERVICES
from faasd.catalog import Catalog
from faasd.durable.runner import AsyncCalls, Outcome
from faasd.durable.store import Call
from faasd.errors import BadRequest, Conflict, FaasdError, NotFound, Unavailable
from faasd.gateway import Gateway, parse_payload
from faasd.services import Services
from faasd.v2 import HEADER_LENGTH

MAX_KEY_CHARS = 255


def executor(catalog: Catalog, gateway: Gateway) -> Any:
    """The `execute` an `AsyncCalls` runs a call with: the synchronous path, rendered."""

    async def execute(call: Call) -> Outcome:
        try:
            version, info = catalog.get(call.function)
            payload = parse_payload(version, info, call.body, call.content_type,
                                    call.header_length)
            invocation = gateway.new_invocation(version, payload.item, payload.postprocess)
            result = await gateway.call(invocation)
            response = render(version.name, str(version.version), payload, result, {})
        except FaasdError as exc:
            response = render_error(exc)
        return Outcome(response.status, response.headers.get("Content-Type", "application/json"),
                       cast(bytes, response.body))

    return execute


def _calls(services: Services) -> AsyncCalls:
    if services.invocations is None:
        raise Unavailable("this daemon takes no asynchronous calls", retry_after_s=60)
    return services.invocations


async def async_function(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    calls = _calls(services)
    name = request.match_info["name"]
    version, info = services.catalog.get(name)
    body = await read_body(request, services.config.max_body_bytes)
    content_type = request.headers.get("Content-Type", "")
    header_length = _header_length(request)
    parse_payload(version, info, body, content_type, header_length)  # 400 before accepting
    call, replay = await calls.accept(name, body, content_type, header_length,
                                      _callback_url(request), _idempotency_key(request))
    headers = {"X-Call-Id": call.id, "Location": f"/system/invocations/{call.id}"}
    if replay:
        headers["X-Idempotent-Replay"] = "true"
    return web.json_response({"id": call.id, "status": call.state.value}, status=202,
                             headers=headers)


async def get_invocation(request: web.Request) -> web.Response:
    call = await _call(request)
    return web.json_response(describe(call))


async def get_result(request: web.Request) -> web.Response:
    call = await _call(request)
    if not call.done:
        return web.json_response({"id": call.id, "status": call.state.value}, status=202,
                                 headers={"Retry-After": "1", "X-Call-Id": call.id})
    return _answer(call, {"X-Call-Id": call.id, "X-Function-Name": call.function})


def _answer(call: Call, headers: dict[str, str]) -> web.Response:
    """The function's answer to a finished call, as it gave it (status, type, body)."""
    headers["Content-Type"] = call.result_type or "application/octet-stream"
    return web.Response(status=call.status_code or 500, body=call.result or b"",
                        headers=headers)


async def list_invocations(request: web.Request) -> web.Response:
    calls = _calls(request.app[SERVICES])
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    found = await calls.recent(request.query.get("function"), limit)
    return web.json_response([describe(c, with_result=False) for c in found])


async def _call(request: web.Request) -> Call:
    call = await _calls(request.app[SERVICES]).get(request.match_info["id"])
    if call is None:
        raise NotFound(f"no async call {request.match_info['id']!r} (results are kept for "
                       "async_result_retention_s after a call ends)")
    return call


def describe(call: Call, with_result: bool = True) -> dict[str, Any]:
    """A call as JSON: status, timings (Unix seconds), attempts, callback, and the result
    (inline JSON when the answer is JSON, else base64)."""
    doc: dict[str, Any] = {
        "id": call.id, "function": call.function, "status": call.state.value,
        "created": call.created_s, "started": call.started_s, "finished": call.finished_s,
        "duration_s": None if call.finished_s is None or call.started_s is None
        else round(call.finished_s - call.started_s, 6),
        "attempts": call.attempts, "status_code": call.status_code, "error": call.error,
        "result_url": f"/system/invocations/{call.id}/result",
    }
    if call.callback_url:
        doc["callback"] = {"url": call.callback_url, "attempts": call.callback_attempts,
                           "status": call.callback_status}
    if with_result and call.done and call.result is not None:
        if (call.result_type or "").endswith("json"):
            import json

            try:
                doc["result"] = json.loads(call.result)
            except ValueError:
                doc["result_base64"] = base64.b64encode(call.result).decode()
        else:
            doc["result_base64"] = base64.b64encode(call.result).decode()
    return doc


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {raw!r}") from None


def _callback_url(request: web.Request) -> str | None:
    raw = request.headers.get("X-Callback-Url")
    if raw is None:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"X-Callback-Url must be an http(s) URL, got {raw!r}")
    return raw


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_KEY_CHARS and key.isprintable()):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters")
    return key


@web.middleware
async def idempotent_calls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`Idempotency-Key` on a synchronous `POST /function/{name}`: the call is recorded and run
    as an async call whose answer this request waits for, so the answer is kept. The same key
    and body again: the first call's answer (`X-Idempotent-Replay: true`), or 409 while that
    call still runs; the same key with another body: 422. A call whose client went away, or
    whose daemon restarted, still finishes, and a retry with the key gets its answer."""
    prefix = "/function/"
    if (request.method != "POST" or not request.path.startswith(prefix)
            or "Idempotency-Key" not in request.headers):
        return await handler(request)
    name = request.path[len(prefix):]
    services = request.app[SERVICES]
    calls = _calls(services)
    version, info = services.catalog.get(name)
    body = await read_body(request, services.config.max_body_bytes)
    content_type = request.headers.get("Content-Type", "")
    header_length = _header_length(request)
    parse_payload(version, info, body, content_type, header_length)
    call, replay = await calls.accept(name, body, content_type, header_length, None,
                                      _idempotency_key(request))
    if replay and not call.done:
        raise Conflict(f"the call with Idempotency-Key {call.idem_key!r} is still running; "
                       "retry shortly to get its answer", call_id=call.id)
    done = await asyncio.shield(calls.wait(call.id)) if not call.done else call
    headers = {"X-Call-Id": done.id}
    if replay:
        headers["X-Idempotent-Replay"] = "true"
    if done.started_s is not None and done.finished_s is not None:
        headers["X-Duration-Seconds"] = f"{done.finished_s - done.started_s:.6f}"
    return _answer(done, headers)
