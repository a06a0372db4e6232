"""JSON for the errors aiohttp answers before any handler or middleware runs.

A request line or header that aiohttp's HTTP parser rejects (a NUL in the path, a URL longer
than 8190 bytes, a malformed header) never reaches `json_errors`: aiohttp's `RequestHandler`
answers it with `text/plain`. Nor does an `Expect` header other than `100-continue`: the
application runs a route's expect handler before its middlewares (for every path, unknown
ones included), and aiohttp's raises a `text/plain` 417. `JsonErrorsRunner` is an `AppRunner`
whose connections answer both as `{"error": ...}` with the same status, so a client can
parse every answer.

aiohttp offers no public hook for the parser's errors; the runner swaps in a
`RequestHandler` subclass that overrides `handle_error`, the one method aiohttp documents as
producing these responses. For the rest it wraps the server's `request_handler` (the
application's entry): an `HTTPException` that leaves the application escaped every
middleware, so it can only be aiohttp's own, raised before them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from faasd.api.strict_json import dumps
from faasd.errors import clip

AppHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and checks state
        if status >= 500:
            text = "internal error in faasd; see the daemon's log"
        else:
            reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
            detail = (message or reason or "bad request").splitlines()[0]
            text = f"the HTTP request cannot be parsed: {detail}; check the request line, " \
                   "the path and the headers"
        response = _json(plain.status, text)
        response.force_close()
        return response


def _json(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=dumps({"error": text}).encode(),
                        content_type="application/json")


def _escaped_message(exc: web.HTTPException, request: BaseRequest) -> str:
    if exc.status == HTTPStatus.EXPECTATION_FAILED:
        expect = clip(request.headers.get(hdrs.EXPECT, ""))
        return (f"Expect: {expect!r} is not supported; send Expect: 100-continue, or no "
                "Expect header")
    return f"{exc.reason}; check the request's method, path and headers"


def json_http_exceptions(handler: AppHandler) -> AppHandler:
    """`handler` (an application's entry), answering the `HTTPException`s that leave it, all
    raised by aiohttp before any middleware ran, as JSON with their status."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json(exc.status, _escaped_message(exc, request))

    return handle


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """`web.AppRunner` whose parser-level error answers are JSON (see the module doc)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same object and state, one method overridden
        server.request_handler = json_http_exceptions(server.request_handler)
        return server
