"""Asynchronous calls: `POST /async-function/{name}`, `POST /async-workflow/{name}` and
`/system/invocations[/{id}[/result]]`.

OpenFaaS semantics: the call is checked as a synchronous one would be (404 unknown function or
workflow, 400 a body the function, or the workflow's source, cannot take, 413 too large) and
then recorded durably; only then the answer is `202 Accepted` with `X-Call-Id` and `Location`.
`X-Callback-Url` (an http or https URL the daemon can call, checked before the call is
accepted) receives the answer when the call ends. `Idempotency-Key` (at most 255 characters):
the same key and body for the same function or workflow answer 202 with the first call's id
(and `X-Idempotent-Replay: true`) instead of a second call; the same key with another body is
422. `GET /system/invocations/{id}` gives the call's status and timings, `.../result` the
answer the function or workflow gave (its status, type, V2 header length and body), 202 while
it has none yet. A call runs through the same code as its synchronous twin (`executor`).
A synchronous call with a key is recorded the same way (`idempotent_calls`), on the V2
inference path too, where the key's request is the V2 one (the same key on `/function/NAME`
is another request: 422).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from faasd.api import workflows
from faasd.api.callback_url import checked_callback_url
from faasd.api.errors import render_error
from faasd.api.invoke import header_length, parse, ran_headers, read_body, render, v2_workflow
from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.auth.middleware import caller
from faasd.auth.tokens import Scope
from faasd.durable.runner import AsyncCalls, Execute, OnDispatch, Outcome, name_header
from faasd.durable.store import Call, Kind
from faasd.errors import BadRequest, Conflict, FaasdError, NotFound, Unavailable
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.gateway import Payload, parse_payload
from faasd.services import Services
from faasd.v2 import HEADER_LENGTH

MAX_KEY_CHARS = 255

#: The synchronous routes (POST) an Idempotency-Key turns into a recorded call, and what they
#: call: None for the V2 inference path, whose model is a function or a workflow served as an
#: ensemble (`invoke.v2_workflow` decides, as for a call without a key).
KEYED_ROUTES: dict[str, Kind | None] = {
    "/function/{name}": Kind.FUNCTION,
    "/workflow/{name}": Kind.WORKFLOW,
    "/v2/models/{name}/infer": None,
    "/v2/models/{name}/versions/{version}/infer": None,
}

#: The headers of an answer that a replay, a result and a callback give back with its body
#: and type: a V2 answer's JSON header length (the body cannot be read without it), and where
#: and how it ran.
REPLAYED_HEADERS = (HEADER_LENGTH, "X-Faasd-Cold-Start", "X-Faasd-Device", "X-Faasd-Node",
                    "X-Faasd-Slo-Ms", "X-Faasd-Slo-Met", "X-Faasd-Cost")


def executor(services: Services) -> Execute:
    """The `execute` an `AsyncCalls` runs a call with: the synchronous path of its function
    or workflow, rendered. The target is looked up again (it may have been redeployed, or
    removed: then the call fails with the 404 a synchronous call would get)."""

    async def execute(call: Call, on_dispatch: OnDispatch | None) -> Outcome:
        try:
            if call.kind is Kind.WORKFLOW:
                response = await _run_workflow(services, call, on_dispatch)
            else:
                response = await _run_function(services, call, on_dispatch)
        except FaasdError as exc:
            response = render_error(exc)
        kept = {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers}
        return Outcome(response.status, response.headers.get("Content-Type", "application/json"),
                       cast(bytes, response.body), kept)

    return execute


async def _run_function(services: Services, call: Call,
                        on_dispatch: OnDispatch | None) -> web.Response:
    version, info = services.catalog.get(call.name)
    payload = _payload(version, info, call)
    invocation = services.gateway.new_invocation(version, payload.item, payload.postprocess,
                                                 on_dispatch)
    result = await services.gateway.call(invocation)
    return render(version.name, str(version.version), payload, result, ran_headers(result))


async def _run_workflow(services: Services, call: Call,
                        on_dispatch: OnDispatch | None) -> web.Response:
    # the SLO counts from the run's start: the time the call waited in the async queue was
    # the caller's choice, and no stage can win it back
    start_s = services.clock.now()
    workflow = services.workflows.get(call.name)
    version, info = services.catalog.get(workflow.spec.source)
    payload = _payload(version, info, call)
    return await workflows.answer(services, workflow, version, payload, call.id, start_s,
                                  on_dispatch)


def _payload(version: FunctionVersion, info: ModelInfo, call: Call) -> Payload:
    return parse_payload(version, info, call.body, call.content_type, call.header_length,
                         call.v2_only)


def _calls(services: Services) -> AsyncCalls:
    if services.invocations is None:
        raise Unavailable("this daemon takes no asynchronous calls", retry_after_s=60)
    return services.invocations


async def async_function(request: web.Request) -> web.Response:
    return await _accept(request, Kind.FUNCTION)


async def async_workflow(request: web.Request) -> web.Response:
    return await _accept(request, Kind.WORKFLOW)


async def _accept(request: web.Request, kind: Kind) -> web.Response:
    services = request.app[SERVICES]
    calls = _calls(services)
    name = request.match_info["name"]
    body, content_type, header_length = await _checked(request, services, kind, name)
    call, replay = await calls.accept(kind, name, body, content_type, header_length,
                                      _callback_url(request), _idempotency_key(request),
                                      owner=_owner(request))
    headers = {"X-Call-Id": call.id, "Location": f"/system/invocations/{call.id}"}
    if replay:
        headers["X-Idempotent-Replay"] = "true"
    return json_response({"id": call.id, "status": call.state.value}, status=202,
                         headers=headers)


async def _checked(request: web.Request, services: Services, kind: Kind, name: str,
                   v2_only: bool = False) -> tuple[bytes, str, int | None]:
    """The body, its type and V2 header length, checked as a
    synchronous call to the target checks them before it runs (404, 413, 400), so that no
    call is accepted that such a call would refuse at once. (What only the function's handler
    can find wrong fails the run.) `v2_only`: the call came on the V2 inference path."""
    version, info = _entry(services, kind, name)
    body = await read_body(request, services.config.max_body_bytes)
    await parse(request, version, info, body, v2_only)
    content_type = request.headers.get("Content-Type", "")
    return body, content_type, header_length(request)


def _entry(services: Services, kind: Kind, name: str) -> tuple[FunctionVersion, ModelInfo]:
    """The function that takes a call's body: the function itself, or the workflow's source."""
    if kind is Kind.WORKFLOW:
        return services.catalog.get(services.workflows.get(name).spec.source)
    return services.catalog.get(name)


async def get_invocation(request: web.Request) -> web.Response:
    call = await _call(request)
    return json_response(describe(call))


async def get_result(request: web.Request) -> web.Response:
    call = await _call(request)
    if not call.done:
        return json_response({"id": call.id, "status": call.state.value}, status=202,
                             headers={"Retry-After": "1", "X-Call-Id": call.id})
    return _answer(call, {"X-Call-Id": call.id, name_header(call): call.name})


def _answer(call: Call, headers: dict[str, str]) -> web.Response:
    """The answer to a finished call, as its function or workflow gave it (status, type,
    body, and the headers in `REPLAYED_HEADERS`)."""
    headers.update(call.result_headers)
    headers["Content-Type"] = call.result_type or "application/octet-stream"
    return web.Response(status=call.status_code or 500, body=call.result or b"",
                        headers=headers)


async def list_invocations(request: web.Request) -> web.Response:
    calls = _calls(request.app[SERVICES])
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    kind, name = _listing_filter(request.query)
    found = await calls.recent(kind, name, limit, _only_own(request))
    return json_response([describe(c, with_result=False) for c in found])


def _listing_filter(query: Mapping[str, str]) -> tuple[Kind | None, str | None]:
    """`?function=NAME` or `?workflow=NAME`: that target's calls; `?name=NAME`: the calls to
    whatever had the name; none: every call."""
    given = {key: query[key] for key in ("function", "workflow", "name") if key in query}
    if len(given) > 1:
        raise BadRequest("filter by one of function=, workflow= or name=, not several")
    if not given:
        return None, None
    ((key, name),) = given.items()
    return (None if key == "name" else Kind(key)), name


def _owner(request: web.Request) -> str | None:
    """Who makes a call: the id of the request's API token (None while the API is open)."""
    token = caller(request)
    return None if token is None else token.id


def _only_own(request: web.Request) -> str | None:
    """Whose calls the request may see: an invoke token its own only (None: every call, for an
    admin token or an open API)."""
    token = caller(request)
    return token.id if token is not None and token.scope is Scope.INVOKE else None


async def _call(request: web.Request) -> Call:
    call = await _calls(request.app[SERVICES]).get(request.match_info["id"])
    own = _only_own(request)
    if call is not None and own is not None and call.owner != own:
        call = None  # another token's call: as if there were none (its id says nothing)
    if call is None:
        raise NotFound(f"no async call {request.match_info['id']!r} (results are kept for "
                       "async_result_retention_s after a call ends)")
    return call


def describe(call: Call, with_result: bool = True) -> dict[str, Any]:
    """A call as JSON: what it called (`kind`, and its name under `function` or `workflow`),
    status, timings (Unix seconds), attempts, callback, and the result (inline JSON when the
    answer is JSON, else base64)."""
    doc: dict[str, Any] = {
        "id": call.id, "kind": call.kind.value, call.kind.value: call.name,
        "status": call.state.value,
        "created": call.created_s, "started": call.started_s, "finished": call.finished_s,
        "duration_s": None if call.finished_s is None or call.started_s is None
        else round(call.finished_s - call.started_s, 6),
        "attempts": call.attempts, "status_code": call.status_code, "error": call.error,
        "result_url": f"/system/invocations/{call.id}/result",
    }
    if call.callback_url:
        doc["callback"] = {"url": call.callback_url, "attempts": call.callback_attempts,
                           "status": call.callback_status,
                           "tries": [{"at": at, "outcome": what}
                                     for at, what in call.callback_tries]}
    if with_result and call.done and call.result is not None:
        if (call.result_type or "").endswith("json"):
            try:  # strict: a handler's body with NaN in it goes as base64, as any non-JSON
                doc["result"] = json.loads(call.result, parse_constant=_not_json)
            except ValueError:
                doc["result_base64"] = base64.b64encode(call.result).decode()
        else:
            doc["result_base64"] = base64.b64encode(call.result).decode()
    return doc


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _callback_url(request: web.Request) -> str | None:
    raw = request.headers.get("X-Callback-Url")
    return None if raw is None else checked_callback_url(raw)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_KEY_CHARS and key.isprintable()):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters")
    return key


def _keyed_target(request: web.Request) -> tuple[Kind, str, bool] | None:
    """(kind, name, whether on the V2 inference path) of a synchronous call that carries an
    Idempotency-Key; None otherwise. NotFound for a V2 path that names another version."""
    if request.method != "POST" or "Idempotency-Key" not in request.headers:
        return None
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in KEYED_ROUTES:
        return None  # not a call (an unknown path, say): the route answers
    name = request.match_info["name"]
    kind = KEYED_ROUTES[resource.canonical]
    if kind is not None:
        return kind, name, False
    services = request.app[SERVICES]
    workflow = v2_workflow(services, name, request.match_info.get("version"))
    return (Kind.FUNCTION if workflow is None else Kind.WORKFLOW), name, True


@web.middleware
async def idempotent_calls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`Idempotency-Key` on a synchronous call (`POST /function/{name}`, `/workflow/{name}` or
    `/v2/models/{name}[/versions/{v}]/infer`): the call is recorded and run as an async call
    whose answer this request waits for, so the answer is kept. The same key and body again:
    the first call's answer (`X-Idempotent-Replay: true`), or 409 while that call still runs;
    the same key with another body: 422. A call whose client went away, or whose daemon
    restarted, still finishes, and a retry with the key gets its answer. A V2 call's answer
    is the V2 answer (the model's tensors, with its type and header length) whether it is
    the first or a replay."""
    target = _keyed_target(request)
    if target is None:
        return await handler(request)
    kind, name, v2_only = target
    services = request.app[SERVICES]
    calls = _calls(services)
    body, content_type, length = await _checked(request, services, kind, name, v2_only)
    call, replay = await calls.accept(kind, name, body, content_type, length, None,
                                      _idempotency_key(request), v2_only, queued=False,
                                      owner=_owner(request))
    if not replay:
        calls.run_now(call.id)  # its caller waits: not behind the queued async calls
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
