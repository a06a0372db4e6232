"""What a web page, a malformed body or a curious client can make the daemon do: 403/415 for
browsers, 400 (never 500) for bodies it cannot read, and no secret in any answer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import aiohttp
import pytest

from faasd.api.browsers import (
    BrowserPolicy,
    content_type_refusal,
    host_name,
    host_refusal,
    origin_refusal,
)
from faasd.daemon import Daemon
from tests.faasd.builders import make_function

LOOPBACK = BrowserPolicy.for_bind("127.0.0.1", allowed_origins=["https://ui.example"])


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1:8080", False),
        ("localhost:8080", False),
        ("[::1]:8080", False),
        ("LOCALHOST", False),
        (None, False),  # HTTP/1.0: no browser sends that
        ("attacker.example:8080", True),  # DNS rebinding
        ("127.0.0.1.nip.io", True),
    ],
)
def test_host_must_name_the_daemon(host: str | None, refused: bool) -> None:
    assert (host_refusal(LOOPBACK, host) is not None) is refused


def test_a_wildcard_bind_allows_any_host_unless_told() -> None:
    assert host_refusal(BrowserPolicy.for_bind("0.0.0.0"), "node7.example:8080") is None
    listed = BrowserPolicy.for_bind("0.0.0.0", allowed_hosts=["node7.example"])
    assert host_refusal(listed, "node7.example") is None
    assert host_refusal(listed, "other.example") is not None
    assert host_name("[::1]:80") == "::1" and host_name("Example.ORG:80") == "example.org"


@pytest.mark.parametrize(
    ("method", "origin", "refused"),
    [
        ("POST", "http://evil.example", True),
        ("DELETE", "null", True),  # a sandboxed iframe or a file:// page
        ("POST", "https://ui.example/", False),  # allowed_origins
        ("POST", "http://127.0.0.1:8080", False),  # the daemon's own origin
        ("GET", "http://evil.example", False),  # reads are for CORS to guard
        ("POST", None, False),  # curl, the CLI
    ],
)
def test_state_changes_from_other_origins_are_refused(method: str, origin: str | None,
                                                      refused: bool) -> None:
    found = origin_refusal(LOOPBACK, method, origin, "127.0.0.1:8080")
    assert (found is not None) is refused


def test_system_bodies_may_not_use_the_types_a_page_sends_without_preflight() -> None:
    for simple in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                   ""):
        assert content_type_refusal("POST", "/system/functions", simple, True) is not None
    assert content_type_refusal("POST", "/system/functions", "application/json", True) is None
    assert content_type_refusal("POST", "/system/functions", "application/x-tar", True) is None
    assert content_type_refusal("DELETE", "/system/functions", "", False) is None
    assert content_type_refusal("POST", "/function/f", "text/plain", True) is None


async def test_a_web_page_cannot_deploy_and_a_rebinding_host_is_refused(
    daemon: Daemon, tmp_path: Path
) -> None:
    source = make_function(tmp_path / "src", "planted")
    body = json.dumps({"path": str(source)})
    url = f"{daemon.url}/system/functions"
    async with aiohttp.ClientSession() as session:
        # what fetch(url, {method: "POST", body}) sends from http://evil.example
        async with session.post(url, data=body, headers={
                "Content-Type": "text/plain;charset=UTF-8",
                "Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
            assert "allowed_origins" in (await resp.json())["error"]
        async with session.post(url, data=body, headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
            assert "application/json" in (await resp.json())["error"]
        async with session.get(f"{daemon.url}/healthz",
                               headers={"Host": "attacker.example:8080"}) as resp:
            assert resp.status == 403
            assert "allowed_hosts" in (await resp.json())["error"]
        async with session.get(url) as resp:
            assert "planted" not in {f["name"] for f in await resp.json()}


async def test_bodies_that_cannot_be_read_are_400_not_500(daemon: Daemon) -> None:
    url = f"{daemon.url}/system/functions"
    async with aiohttp.ClientSession() as session:
        deep = b"[" * 100_000 + b"]" * 100_000
        async with session.post(url, data=deep,
                                headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400, await resp.text()
            assert "not valid JSON" in (await resp.json())["error"]
        async with session.post(url, data=b"this is not gzip", headers={
                "Content-Type": "application/json", "Content-Encoding": "gzip",
                "Connection": "close"}) as resp:  # the daemon closes it after such a body
            assert resp.status == 400, await resp.text()
            assert "cannot be read" in (await resp.json())["error"]
        good = gzip.compress(json.dumps({"x": [[1, 2, 3, 4]]}).encode())
        async with session.post(f"{daemon.url}/function/linear", data=good, headers={
                "Content-Type": "application/json", "Content-Encoding": "gzip"}) as resp:
            assert resp.status == 200


async def test_env_values_are_never_shown(daemon: Daemon, tmp_path: Path) -> None:
    source = make_function(tmp_path / "src", "secretive",
                           "env: {DB_PASSWORD: hunter2, OMP_NUM_THREADS: 1}\n")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{daemon.url}/system/functions",
                                json={"path": str(source)}) as resp:
            assert resp.status == 201
            created = await resp.text()
        async with session.get(f"{daemon.url}/system/functions") as resp:
            listed = await resp.text()
        async with session.get(f"{daemon.url}/system/function/secretive") as resp:
            one = await resp.json()
    for answer in (created, listed, json.dumps(one)):
        assert "hunter2" not in answer
    assert one["settings"]["env"] == {"DB_PASSWORD": "***", "OMP_NUM_THREADS": "***"}
