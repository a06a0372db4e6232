"""The error middleware on its own: every failure becomes JSON with the right status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from faasd.api.errors import MAX_ERROR_CHARS, json_errors
from faasd.errors import BadRequest, Overloaded, SandboxTimeout, Unavailable
from tests.faasd.builders import served


async def _raise(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "bug":
        raise RuntimeError("secret internals")
    if kind == "busy":
        raise Overloaded("queue full", retry_after_s=2.5)
    if kind == "down":
        raise Unavailable("shutting down", retry_after_s=5)
    if kind == "slow":
        raise SandboxTimeout("too slow", function="f")
    if kind == "echo":
        said = "n" * 10**6
        raise BadRequest(f"no function named {said!r}", file=said)
    raise BadRequest("bad", file=None)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/x/{kind}", _raise)
    async with served(app) as base:
        yield base


@pytest.mark.parametrize(
    ("kind", "status", "retry_after", "extra"),
    [
        ("bug", 500, None, {}),
        ("busy", 429, "3", {}),
        ("down", 503, "5", {}),
        ("slow", 504, None, {"function": "f"}),
        ("bad", 400, None, {}),
    ],
)
async def test_errors_are_json(url: str, kind: str, status: int, retry_after: str | None,
                               extra: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/x/{kind}") as resp:
        assert resp.status == status
        doc = await resp.json()
        assert resp.headers.get("Retry-After") == retry_after
    message = doc.pop("error")
    assert isinstance(message, str) and message
    assert doc == extra  # None-valued extras (file=None) are left out
    if kind == "bug":
        assert "secret" not in message and "daemon's log" in message


async def test_aiohttp_404_and_405_are_json_with_allow(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/nope") as resp:
            assert resp.status == 404
            assert "GET /nope" in (await resp.json())["error"]
        async with s.post(f"{url}/x/bad") as resp:
            assert resp.status == 405
            assert "GET" in resp.headers["Allow"]
            assert "use GET" in (await resp.json())["error"]


async def test_a_message_quoting_a_huge_name_is_cut(url: str) -> None:
    """An error that repeats, unclipped, a megabyte a client sent answers 4000 characters
    of it at most, ending in an ellipsis."""
    async with aiohttp.ClientSession() as s, s.get(f"{url}/x/echo") as resp:
        assert resp.status == 400
        body = await resp.read()
    assert len(body) < 10_000
    doc = json.loads(body)
    assert doc["error"].startswith("no function named 'nnn") and doc["error"].endswith("\u2026")
    assert len(doc["error"]) == len(doc["file"]) == MAX_ERROR_CHARS
