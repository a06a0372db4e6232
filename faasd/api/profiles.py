"""Profiles as a resource: `POST /system/profile/{name}` runs one, `GET` shows the table.

POST answers `application/x-ndjson`: one JSON object a line as the profile goes ("start", a
"point" per measured configuration, "done"). `?kind=small` measures the small grid a deploy
uses instead of the full one. Whatever stops the profile before it starts (unknown function
404, no sample request 400, a profile of it already running 409) is a JSON error as usual;
once the stream has begun, a failure is its last line, `{"event": "error", "error": ...,
"status": ...}`.
"""

from __future__ import annotations

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.api.strict_json import dumps, json_response
from faasd.errors import BadRequest, FaasdError, Unavailable
from faasd.profiles.plan import Kind
from faasd.profiles.service import ProfileService
from faasd.services import Services

NDJSON = "application/x-ndjson"


def _service(services: Services) -> ProfileService:
    if services.profiles is None:
        raise Unavailable("this daemon keeps no profiles", retry_after_s=60)
    return services.profiles


async def run_profile(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("kind", Kind.FULL.value)
    try:
        kind = Kind(raw)
    except ValueError:
        raise BadRequest(f"kind must be full or small, got {raw!r}") from None
    run = _service(request.app[SERVICES]).start_profile(request.match_info["name"], kind)
    try:
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        try:
            async for event in run:
                await response.write(_line(event))
        except FaasdError as exc:
            await response.write(_line({"event": "error", "error": exc.message,
                                        "status": exc.status}))
        await response.write_eof()
        return response
    finally:
        run.close()


async def get_profile(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response(_service(services).table(request.match_info["name"]))


def _line(event: object) -> bytes:
    return dumps(event).encode() + b"\n"
