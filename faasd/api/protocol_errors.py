"""JSON for the errors aiohttp answers before any handler or middleware runs.

A request line or header that aiohttp's HTTP parser rejects (a NUL in the path, a URL longer
than 8190 bytes, a malformed header) never reaches `json_errors`: aiohttp's `RequestHandler`
answers it with `text/plain`. `JsonErrorsRunner` is an `AppRunner` whose connections answer
those errors as `{"error": ...}` with the same status, so a client can parse every answer.

aiohttp offers no public hook for this; the runner swaps in a `RequestHandler` subclass that
overrides `handle_error`, the one method aiohttp documents as producing these responses.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest


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
        response = web.Response(
            status=plain.status,
            body=json.dumps({"error": text}).encode(),
            content_type="application/json",
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """`web.AppRunner` whose parser-level error answers are JSON (see the module doc)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same object and state, one method overridden
        return server
