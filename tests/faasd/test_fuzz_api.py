"""A property-based fuzzer over every endpoint and body form of a real `faasd up`.

Properties, for any method, path, headers and body hypothesis makes: never a 5xx but the
function's own 502/504 (no 500 from faasd), every error is JSON `{"error": ...}`, and the
daemon is healthy and serves a normal call afterwards. Callback URLs stay on loopback (a
discard port) and deploys never point outside the test's directory.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faasd.builders import TEXT_HANDLER, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

NAMES = st.sampled_from(["linear", "texty", "nope", "", "li%00near", "..", "%2e%2e",
                         "a" * 300, "ünï", "linear/extra"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)


@st.composite
def v2_documents(draw: st.DrawFn) -> Any:
    entry = {
        "name": draw(st.sampled_from(["x", "y", "", 3])),
        "shape": draw(st.one_of(st.lists(st.integers(-2, 5), max_size=3), json_values)),
        "datatype": draw(st.sampled_from(["FP32", "INT32", "UINT8", "BYTES", "BOOL", "FP99",
                                          7])),
        draw(st.sampled_from(["data", "parameters", "dta"])): draw(json_values),
    }
    doc: dict[str, Any] = {"inputs": draw(st.sampled_from([[entry], [], entry, "x"]))}
    if draw(st.booleans()):
        doc["outputs"] = draw(st.one_of(json_values, st.just([{"name": "y"}])))
    if draw(st.booleans()):
        doc["parameters"] = draw(json_values)
    return doc


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    v2_documents().map(lambda v: json.dumps(v).encode()),
    st.just(b'{"x": [[1, 2, 3, 4]]}'),
    st.sampled_from([b"1,2,3,4", b"bug", b"NaN", b'{"x": [[NaN, 1e400, 2, 3]]}']),
)

#: header text http.client will send (no control characters; the parser tests cover those)
header_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                      max_size=8)

headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "image/png",
                                     "application/x-tar", "application/gzip", "", "a/b; c=d",
                                     "application/json; charset=\u00e9"]),
    "Inference-Header-Content-Length": st.one_of(st.integers(-5, 400).map(str),
                                                 header_text),
    "Idempotency-Key": header_text,
    "X-Callback-Url": st.sampled_from(["http://127.0.0.1:9/cb", "ftp://x", "nope", ""]),
    "Content-Encoding": st.sampled_from(["gzip", "br", "identity"]),
})


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    name = draw(NAMES)
    template = draw(st.sampled_from([
        ("POST", "/function/{n}"), ("POST", "/async-function/{n}"),
        ("POST", "/workflow/{n}"), ("POST", "/async-workflow/{n}"),
        ("POST", "/v2/models/{n}/infer"), ("POST", "/v2/models/{n}/versions/1/infer"),
        ("GET", "/v2/models/{n}"), ("GET", "/v2/models/{n}/ready"),
        ("GET", "/v2/models/{n}/config"), ("GET", "/system/function/{n}"),
        ("GET", "/system/invocations/{n}"), ("GET", "/system/invocations/{n}/result"),
        ("GET", "/system/invocations?function={n}&limit={n}"),
        ("GET", "/system/invocations?workflow={n}&name={n}"),
        ("GET", "/system/functions"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v2"),
        ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
        ("POST", "/system/functions"), ("PUT", "/system/functions"),
        ("DELETE", "/system/functions"), ("PATCH", "/function/{n}"), ("GET", "/{n}"),
    ]))
    method, path = template
    path = path.replace("{n}", urllib.parse.quote(name, safe="%/."))
    body = draw(bodies)
    if path == "/system/functions" and method in ("POST", "PUT"):
        body = json.dumps({"path": draw(st.sampled_from(["relative", "/nonexistent/fn", ""])),
                           "name": draw(st.one_of(st.none(), NAMES))}).encode()
    if method == "DELETE":
        body = json.dumps({"functionName": draw(st.sampled_from(["nope", "", 3]))}).encode()
    return method, path, draw(headers), body


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    make_function(tmp / "functions", "linear", "batching: {max_batch_size: 4}\n")
    make_function(tmp / "functions", "texty", "timeout_s: 5\n", TEXT_HANDLER)
    daemon = start_daemon(tmp, tmp / "functions")
    yield daemon
    assert daemon.stop() == 0, daemon.log()
    assert "unexpected error on" not in daemon.log(), daemon.log()[-3000:]  # faasd's 500s


def _send(daemon: DaemonProcess, method: str, path: str, head: dict[str, str],
          body: bytes) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for key, value in head.items():
            connection.putheader(key, value.encode("utf-8", "surrogateescape"))
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        resp = connection.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        connection.close()


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_no_request_gets_a_500_and_every_error_is_json(
        live: DaemonProcess, request: tuple[str, str, dict[str, str], bytes]) -> None:
    method, path, head, body = request
    status, content_type, answer = _send(live, method, path, head, body)
    assert status < 500 or status in (502, 503, 504), (status, answer[:300])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, answer[:200])
        assert isinstance(json.loads(answer)["error"], str)


def test_the_daemon_is_healthy_after_the_fuzzing(live: DaemonProcess) -> None:
    status, _, answer = _send(live, "GET", "/healthz", {}, b"")
    assert status == 200 and json.loads(answer)["status"] == "ok"
    status, _, answer = _send(live, "POST", "/function/linear",
                              {"Content-Type": "application/json"}, b'{"x": [[1, 2, 3, 4]]}')
    assert status == 200, answer
    assert Path(live.log_path).exists()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, dict[
        str, str]]]:
    import time

    from faasd.auth.store import TokenStore
    from faasd.auth.tokens import Scope

    tmp = tmp_path_factory.mktemp("fuzz-auth")
    make_function(tmp / "functions", "linear")
    store = TokenStore(tmp / "state")
    tokens = {scope.value: store.create(scope, scope.value, None, time.time())[1]
              for scope in Scope}
    daemon = start_daemon(tmp, tmp / "functions")
    yield daemon, tokens
    assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "unexpected error on" not in log
    assert not any(token in log for token in tokens.values())  # never logged


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests(), who=st.sampled_from(["none", "invoke", "admin", "junk", "basic",
                                                  "odd"]))
def test_with_tokens_every_answer_is_json_and_scoped(
        secured: tuple[DaemonProcess, dict[str, str]],
        request: tuple[str, str, dict[str, str], bytes], who: str) -> None:
    daemon, tokens = secured
    method, path, head, body = request
    auth = {"none": None, "invoke": f"Bearer {tokens['invoke']}",
            "admin": f"Bearer {tokens['admin']}", "junk": "Bearer fdt_junk",
            "basic": "Basic YTpi", "odd": "Bearer \u00e9\u00e9"}[who]
    if auth is not None:
        head = {**head, "Authorization": auth}
    status, content_type, answer = _send(daemon, method, path, head, body)
    assert status < 500 or status in (502, 503, 504), (status, answer[:300])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, answer[:200])
        assert isinstance(json.loads(answer)["error"], str)
    open_path = path == "/healthz" or path.startswith("/v2/health/")
    if who in ("none", "junk", "basic", "odd") and not open_path:
        assert status == 401, (who, method, path, status)
    if who == "invoke" and path.startswith("/system/functions"):
        assert status == 403
