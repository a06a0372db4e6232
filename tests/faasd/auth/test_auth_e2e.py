"""Tokens through real HTTP, the real CLI and `faasd up`: the matrix, live changes, exposure."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from faasd.auth.store import TokenCache, TokenStore
from faasd.auth.tokens import Scope, authorize
from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import expected_y, make_function
from tests.faasd.workflows.builders import workflow_dir, write_op_model

pytestmark = pytest.mark.slow

CALL = {"x": [[1, 2, 3, 4]]}


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[Daemon, TokenStore]]:
    make_function(tmp_path / "functions", "linear")
    store = TokenStore(tmp_path / "state")
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=tmp_path / "functions")
    async with Daemon(config) as daemon:
        yield daemon, store


async def _status(session: aiohttp.ClientSession, method: str, url: str,
                  token: str | None, **kwargs: object) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, headers=headers, **kwargs) as resp:  # type: ignore[arg-type]
        if resp.status in (401, 403):
            assert resp.content_type == "application/json"
            doc = await resp.json()
            if resp.status == 401:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            return resp.status, doc
        return resp.status, {}


async def test_the_matrix_over_http(secured: tuple[Daemon, TokenStore],
                                    caplog: pytest.LogCaptureFixture) -> None:
    daemon, store = secured
    url = daemon.url
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as s:
        # no token on record: open, as before
        assert (await _status(s, "POST", f"{url}/function/linear", None, json=CALL))[0] == 200
        _, invoke = store.create(Scope.INVOKE, "caller", None, 0.0)  # picked up live
        _, admin = store.create(Scope.ADMIN, "ops", None, 0.0)
        _, expired = store.create(Scope.ADMIN, "old", 1.0, 0.0)
        _, revoked = store.create(Scope.ADMIN, "gone", None, 0.0)
        store.revoke("gone", 1.0)

        for token in (None, "fdt_wrong", expired, revoked):
            for method, path in [("POST", "/function/linear"), ("POST", "/function/nope"),
                                 ("GET", "/system/functions"), ("GET", "/metrics"),
                                 ("POST", "/v2/models/linear/infer"), ("GET", "/no/such")]:
                status, doc = await _status(s, method, url + path, token, json=CALL)
                assert status == 401, (token, path)
                assert "nope" not in str(doc["error"])  # says nothing of what exists
        # the same 401 body whether the function exists or not
        _, a = await _status(s, "POST", f"{url}/function/linear", None, json=CALL)
        _, b = await _status(s, "POST", f"{url}/function/nope", None, json=CALL)
        assert a == b

        assert (await _status(s, "POST", f"{url}/function/linear", invoke, json=CALL))[0] == 200
        assert (await _status(s, "GET", f"{url}/v2/models/linear", invoke))[0] == 200
        for method, path in [("GET", "/system/functions"), ("GET", "/metrics"),
                             ("DELETE", "/system/functions")]:
            status, doc = await _status(s, method, url + path, invoke, json={"name": "linear"})
            assert status == 403 and "needs an admin token" in str(doc["error"])
        assert (await _status(s, "GET", f"{url}/system/functions", admin))[0] == 200
        assert (await _status(s, "GET", f"{url}/metrics", admin))[0] == 200
        assert (await _status(s, "POST", f"{url}/function/linear", admin, json=CALL))[0] == 200
        for path in ("/healthz", "/v2/health/live", "/v2/health/ready"):
            assert (await _status(s, "GET", url + path, None))[0] == 200

        store.revoke("caller", 2.0)  # revoked while the daemon runs: refused at once
        assert (await _status(s, "POST", f"{url}/function/linear", invoke, json=CALL))[0] == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for token in (invoke, admin, expired, revoked):
        assert token not in logged


def _cli(*args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAASD_")}
    return subprocess.run([sys.executable, "-m", "faasd.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**clean, **(env or {})})


async def _acli(*args: str, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """`_cli` off the event loop, which serves the daemon the CLI talks to."""
    return await asyncio.to_thread(_cli, *args, env=env)


async def test_the_cli_creates_tokens_and_sends_them(secured: tuple[Daemon, TokenStore],
                                                     tmp_path: Path) -> None:
    daemon, store = secured
    state = str(store.path.parent)
    created = await _acli("token", "create", "--scope", "invoke", "--name", "ci",
                          "--expires", "1d", "--state-dir", state)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1].split()[-1]
    admin = await _acli("token", "create", "--scope", "admin", "--state-dir", state)
    admin_token = admin.stdout.split()[-1]
    listed = await _acli("token", "list", "-o", "json", "--state-dir", state)
    docs = json.loads(listed.stdout)
    assert (docs[0]["name"], docs[0]["scope"], docs[0]["status"]) == ("ci", "invoke", "live")
    assert token not in listed.stdout and admin_token not in listed.stdout

    body = json.dumps(CALL)
    refused = await _acli("invoke", "linear", "-g", daemon.url, "-d", body)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    assert "faasd token create" in refused.stderr
    as_ci = {"FAASD_TOKEN": token}
    ok = await _acli("invoke", "linear", "-g", daemon.url, "-d", body, env=as_ci)
    assert ok.returncode == 0, ok.stderr
    token_file = tmp_path / "admin.token"
    token_file.write_text(admin_token + "\n")
    listed_fns = await _acli("list", "-g", daemon.url, "--token-file", str(token_file))
    assert listed_fns.returncode == 0 and "linear" in listed_fns.stdout
    forbidden = await _acli("list", "-g", daemon.url, env=as_ci)
    assert forbidden.returncode == 1 and "HTTP 403" in forbidden.stderr

    revoked = await _acli("token", "revoke", "ci", "--state-dir", state)
    assert revoked.returncode == 0, revoked.stderr
    again = await _acli("invoke", "linear", "-g", daemon.url, "-d", body, env=as_ci)
    assert again.returncode == 1 and "HTTP 401" in again.stderr
    bad = await _acli("token", "create", "--scope", "invoke", "--expires", "soon",
                      "--state-dir", state)
    assert bad.returncode == 1 and "write e.g. 30d" in bad.stderr


def test_the_same_token_goes_on_every_node_from_a_file(tmp_path: Path) -> None:
    first, second = tmp_path / "n1", tmp_path / "n2"
    made = _cli("token", "create", "--scope", "admin", "--name", "ops", "--state-dir", str(first))
    token_file = tmp_path / "admin.token"
    token_file.write_text(made.stdout.split()[-1] + "\n")
    copied = _cli("token", "create", "--scope", "admin", "--name", "ops", "--token-file",
                  str(token_file), "--state-dir", str(second))
    assert copied.returncode == 0, copied.stderr
    assert token_file.read_text().strip() not in copied.stdout  # nothing secret printed
    records = TokenCache(second).records()
    bearer = f"Bearer {token_file.read_text().strip()}"
    assert authorize(records, bearer, Scope.ADMIN, time.time()).status == 200
    missing = _cli("token", "create", "--scope", "admin", "--token-file",
                   str(tmp_path / "nope"), "--state-dir", str(second))
    assert missing.returncode == 1 and "--token-file: cannot read" in missing.stderr
    token_file.write_text("hunter2\n")
    bad = _cli("token", "create", "--scope", "admin", "--token-file", str(token_file),
               "--state-dir", str(second))
    assert bad.returncode == 1 and "not a faasd token" in bad.stderr


def test_up_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    refused = _cli("up", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(state))
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]  # the error, on one line of its own
    assert last.startswith("faasd: faasd will not listen on 0.0.0.0 without an API token")
    assert f"faasd token create --scope admin --state-dir {state.resolve()}" in last
    assert not state.exists()  # refused before it created anything


async def test_tokens_over_http_need_an_admin_token(secured: tuple[Daemon, TokenStore]) -> None:
    daemon, store = secured
    url = f"{daemon.url}/system/tokens"
    _, admin = store.create(Scope.ADMIN, "ops", None, 0.0)
    _, invoke = store.create(Scope.INVOKE, "caller", None, 0.0)
    async with aiohttp.ClientSession() as s:
        assert (await _status(s, "POST", url, invoke, json={"scope": "invoke"}))[0] == 403
        auth = {"Authorization": f"Bearer {admin}"}
        async with s.post(url, json={"scope": "invoke", "name": "remote", "expires": "1h"},
                          headers=auth) as resp:
            assert resp.status == 201
            made = await resp.json()
        assert made["token"].startswith("fdt_") and made["status"] == "live"
        assert made["expires"] is not None
        call = {"Authorization": f"Bearer {made['token']}"}
        async with s.post(f"{daemon.url}/function/linear", json=CALL, headers=call) as resp:
            assert resp.status == 200
        async with s.get(url, headers=auth) as resp:
            listed = await resp.json()
        assert {t["name"] for t in listed} == {"ops", "caller", "remote"}
        assert all("token" not in t for t in listed)
        async with s.post(url, json={"scope": "root"}, headers=auth) as resp:
            assert resp.status == 400
        async with s.delete(f"{url}/remote", headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "revoked"
        async with s.delete(f"{url}/nope", headers=auth) as resp:
            assert resp.status == 404
        async with s.post(f"{daemon.url}/function/linear", json=CALL, headers=call) as resp:
            assert resp.status == 401


async def test_an_invoke_token_calls_a_workflow_from_the_cli_and_plan_takes_a_token(
        tmp_path: Path) -> None:
    functions, workflows = tmp_path / "functions", tmp_path / "workflows"
    make_function(functions, "linear")
    write_op_model(functions / "incy" / "model.onnx", ["y"], "z", "Add", 1.0, width=3)
    workflow_dir(workflows, "flow", """
        slo_ms: 10000
        functions: [linear, incy]
        edges: [{from: linear, to: incy}]
    """)
    store = TokenStore(tmp_path / "state")
    _, invoke = store.create(Scope.INVOKE, "caller", None, 0.0)
    _, admin = store.create(Scope.ADMIN, "ops", None, 0.0)
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(admin + "\n")
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=functions, workflows_dir=workflows)
    async with Daemon(config) as daemon:
        as_caller = {"FAASD_TOKEN": invoke}
        body = json.dumps(CALL)
        ran = await _acli("invoke", "flow", "-g", daemon.url, "-d", body, env=as_caller)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["z"][0] == pytest.approx(
            [y + 1 for y in expected_y([1, 2, 3, 4])], rel=1e-5)
        queued = await _acli("invoke", "flow", "--async", "-g", daemon.url, "-d", body,
                             env=as_caller)
        assert queued.returncode == 0 and len(queued.stdout.strip()) == 32, queued.stderr
        unknown = await _acli("invoke", "nothing", "-g", daemon.url, "-d", body, env=as_caller)
        assert unknown.returncode == 1
        assert "no function or workflow named 'nothing'" in unknown.stderr

        planned = await _acli("plan", "flow", "-g", daemon.url, "--token-file", str(admin_file))
        assert planned.returncode == 0 and "workflow flow" in planned.stdout, planned.stderr
        refused = await _acli("plan", "flow", "-g", daemon.url)
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
        version = await _acli("version", "-g", daemon.url)  # says why it cannot tell
        assert "HTTP 401" in version.stdout and "faasd token create" in version.stdout


async def test_token_times_over_http_are_strict_json(secured: tuple[Daemon, TokenStore]) -> None:
    """`"expires": "999…9w"` answered 201 with `"expires": Infinity`, and every later GET
    repeated it: now a 400 that names the limit, and a record written before the limit (an
    Infinity expiry) lists as null (never)."""
    daemon, store = secured
    url = f"{daemon.url}/system/tokens"
    _, admin = store.create(Scope.ADMIN, "ops", None, 0.0)
    store.create(Scope.INVOKE, "forever", float("inf"), time.time())
    auth = {"Authorization": f"Bearer {admin}"}

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))

    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"scope": "invoke", "expires": "9" * 40 + "w"},
                          headers=auth) as resp:
            assert resp.status == 400
            assert "longer than 10 years" in (await resp.json())["error"]
        async with s.post(url, json={"scope": "invoke", "expires": "3650d"},
                          headers=auth) as resp:
            assert resp.status == 201
            assert isinstance(strict(await resp.text())["expires"], float)  # type: ignore[index]
        async with s.get(url, headers=auth) as resp:
            listed = strict(await resp.text())
    forever = next(t for t in listed if t["name"] == "forever")  # type: ignore[attr-defined]
    assert forever["expires"] is None and forever["status"] == "live"


async def test_an_invoke_token_sees_its_own_calls_and_keys(
        secured: tuple[Daemon, TokenStore]) -> None:
    """Two clients with invoke tokens: neither reads the other's async calls, nor gets the
    other's answer by sending the same Idempotency-Key; an admin token sees every call."""
    daemon, store = secured
    url = daemon.url
    _, ann = store.create(Scope.INVOKE, "ann", None, 0.0)
    _, bob = store.create(Scope.INVOKE, "bob", None, 0.0)
    _, ops = store.create(Scope.ADMIN, "ops", None, 0.0)

    def auth(token: str, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", **more}

    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/async-function/linear", json=CALL,
                          headers=auth(ann, **{"Idempotency-Key": "same"})) as resp:
            assert resp.status == 202
            anns = resp.headers["X-Call-Id"]
        async with s.post(f"{url}/async-function/linear", json=CALL,
                          headers=auth(bob, **{"Idempotency-Key": "same"})) as resp:
            assert resp.status == 202 and "X-Idempotent-Replay" not in resp.headers
            bobs = resp.headers["X-Call-Id"]
        assert bobs != anns
        for path in (f"/system/invocations/{anns}", f"/system/invocations/{anns}/result"):
            async with s.get(url + path, headers=auth(bob)) as resp:
                assert resp.status == 404 and "no async call" in (await resp.json())["error"]
            async with s.get(url + path, headers=auth(ops)) as resp:
                assert resp.status in (200, 202)
        async with s.get(f"{url}/system/invocations", headers=auth(bob)) as resp:
            assert [c["id"] for c in await resp.json()] == [bobs]
        async with s.get(f"{url}/system/invocations", headers=auth(ops)) as resp:
            assert {c["id"] for c in await resp.json()} == {anns, bobs}
