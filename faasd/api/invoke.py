"""Invocations: `POST /function/{name}` and `POST /v2/models/{name}[/versions/{v}]/infer`.

Both go the same way (gateway → controller → invoker → sandbox); the V2 path accepts only V2
requests and always answers with the model's tensors (a handler's hooks are skipped there, see
`faasd/gateway.py`). Every answer carries `X-Call-Id`, `X-Start-Time` (Unix nanoseconds, as
OpenFaaS), `X-Duration-Seconds` and, on success, `X-Faasd-Cold-Start` and `X-Faasd-Device` (where
it ran: `cpu`, `cuda:MIG-…`, `cuda:0 (mps 43%)`, or under a fake GPU `cpu (fake MIG-…)`); in a
cluster, `X-Faasd-Node` names the node that ran a call entering elsewhere.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from faasd.api.errors import render_error
from faasd.api.keys import SERVICES
from faasd.errors import BadRequest, FaasdError, NotFound, Unavailable, clip
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.gateway import CallResult, Payload, parse_payload
from faasd.sandbox.items import BodyResult, TensorResult
from faasd.services import Services
from faasd.v2 import HEADER_LENGTH, encode_plain, encode_response
from faasd.workflows.runner import DeployedWorkflow

#: A body with more JSON than this is parsed in a worker thread: a millisecond or more of
#: parsing would stall every other request on the event loop (`/healthz` included).
OFFLOAD_JSON_BYTES = 64 * 1024


async def function_call(request: web.Request) -> web.StreamResponse:
    return await _call(request, request.match_info["name"], v2_only=False)


async def v2_infer(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if v2_workflow(request.app[SERVICES], name, request.match_info.get("version")) is not None:
        from faasd.api import workflows

        return await workflows.call(request, name, v2_only=True)
    return await _call(request, name, v2_only=True)


def v2_workflow(services: Services, name: str, wanted: str | None) -> DeployedWorkflow | None:
    """The workflow the V2 model `name` is (an ensemble: no function of that name is ready),
    or None when it is a function. NotFound when the path names a version (`wanted`) other
    than the one served, or (for a function) nothing has the name."""
    workflow = services.workflows.find(name) if not services.catalog.ready(name) else None
    if workflow is not None:
        _check_version(name, workflow.version, wanted)
        return workflow
    if wanted is not None:
        version, _ = services.catalog.get(name)
        _check_version(name, version.version, wanted)
    return None


def _check_version(name: str, version: int, wanted: str | None) -> None:
    if wanted is not None and wanted != str(version):
        raise NotFound(f"{name!r} serves version {version} only, not {clip(wanted)}")


async def _call(request: web.Request, name: str, v2_only: bool) -> web.StreamResponse:
    services = request.app[SERVICES]
    start_s = services.clock.now()
    start_ns = int(services.clock.wall() * 1e9)
    version, info = services.catalog.get(name)
    try:
        problem = services.catalog.problem(name)
        if problem is not None:
            raise Unavailable(f"{name} is not ready: {problem}", retry_after_s=60)
        body = await read_body(request, services.config.max_body_bytes)
        payload = await parse(request, version, info, body, v2_only)
    except FaasdError as exc:
        services.gateway.rejected(name, exc.status, start_s)
        raise
    invocation = services.gateway.new_invocation(version, payload.item, payload.postprocess)
    headers = {"X-Call-Id": invocation.id, "X-Start-Time": str(start_ns)}
    try:
        result = await services.gateway.call(invocation)
    except FaasdError as exc:
        headers["X-Duration-Seconds"] = f"{services.clock.now() - start_s:.6f}"
        return render_error(exc, headers)
    headers["X-Duration-Seconds"] = f"{services.clock.now() - start_s:.6f}"
    headers.update(ran_headers(result))
    return render(version.name, str(version.version), payload, result, headers)


def ran_headers(result: CallResult) -> dict[str, str]:
    """Where and how a call that succeeded ran: cold start, device, and node in a cluster."""
    headers = {"X-Faasd-Cold-Start": "true" if result.cold_start else "false",
               "X-Faasd-Device": result.device}
    if result.node:
        headers["X-Faasd-Node"] = result.node
    return headers


async def read_body(request: web.Request, limit_bytes: int) -> bytes:
    """The whole request body, copied once in user space when its length is known and it is
    not compressed: the chunks aiohttp's parser hands over are taken as they are and joined
    once. (`request.read()` extends a bytearray and then copies it into bytes; `readexactly`
    joins what each of its reads finds and then joins the reads: both copy a 600 KB tensor
    twice, and each copy of it costs the daemon about 50 µs of CPU on a call.)"""
    length = request.content_length
    if length is None or "Content-Encoding" in request.headers:
        return await request.read()  # chunked or compressed: aiohttp counts and inflates
    if length > limit_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=limit_bytes, actual_size=length)
    chunks: list[bytes] = []
    received = 0
    while received < length:
        chunk, _ = await request.content.readchunk()
        if not chunk:
            raise BadRequest(f"the body ended after {received} of its {length} bytes")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)  # one chunk: the same object, no copy


async def parse(
    request: web.Request, version: FunctionVersion, info: ModelInfo, body: bytes, v2_only: bool
) -> Payload:
    """`parse_payload` of the request's body, in a thread when parsing may be slow."""
    length = header_length(request)
    args = (version, info, body, request.headers.get("Content-Type", ""), length, v2_only)
    if _parse_is_slow(body, length):
        return await asyncio.to_thread(parse_payload, *args)
    return parse_payload(*args)


def _parse_is_slow(body: bytes, header_length: int | None) -> bool:
    """Whether parsing may take more than a millisecond: much JSON, or BYTES elements in a
    large binary tail (decoded one by one). Fixed-size binary tensors are views: never slow."""
    json_bytes = len(body) if header_length is None else header_length
    if json_bytes > OFFLOAD_JSON_BYTES:
        return True
    return (header_length is not None and len(body) > OFFLOAD_JSON_BYTES
            and b'"BYTES"' in body[:header_length])


def header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {raw!r}") from None


def render(
    name: str, version: str, payload: Payload, result: CallResult, headers: dict[str, str]
) -> web.Response:
    """The HTTP answer for a finished call, in the form the caller used."""
    answer = result.result
    if isinstance(answer, BodyResult):
        headers["Content-Type"] = answer.content_type
        return web.Response(body=answer.body, headers=headers)
    if not isinstance(answer, TensorResult):  # failures were raised by the invoker
        raise TypeError(f"unexpected result {type(answer).__name__}")
    if payload.form == "v2" and payload.request is not None:
        body, json_length = encode_response(name, version, payload.request, answer.tensors)
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
            headers["Content-Type"] = "application/octet-stream"
        else:
            headers["Content-Type"] = "application/json"
        return web.Response(body=body, headers=headers)
    headers["Content-Type"] = "application/json"
    return web.Response(body=encode_plain(answer.tensors), headers=headers)
