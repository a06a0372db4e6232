"""A property-based fuzzer over every route and body form of a real `faasd up`.

The routes are the app's own (`create_app`'s router), so a route added later is fuzzed without
a change here, and the last test checks that every one was reached. Each route gets the bodies
it reads (tensors, deploy documents, real tar and gzip uploads valid and broken, workflow and
token documents, msgpack for the cluster's paths), and every request gets hypothesis-made
headers (`X-Callback-Url`, `Expect`, `Idempotency-Key`, `Content-Type`, ...). The daemon has
functions and a workflow deployed, and an admin and an invoke token; requests carry the admin
token, but for the test of the tokens themselves.

Properties, for any request: never a 5xx but the function's own 502/503/504 (no 500 from
faasd); every error is JSON `{"error": ...}`; every JSON answer, errors and successes alike,
parses with a strict parser (no NaN or Infinity); the daemon is healthy and serves a normal
call afterwards. Callback URLs that could be called stay on loopback, at a port nobody
listens on, and deploys never point outside the test's directory.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import re
import socket
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faasd.api import create_app
from faasd.archive import TAR_TYPES, pack
from faasd.auth.store import TokenStore
from faasd.auth.tokens import Scope
from faasd.config import DaemonConfig
from tests.faasd.builders import TEXT_HANDLER, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon
from tests.faasd.workflows.builders import workflow_dir, write_op_model

pytestmark = pytest.mark.slow


def _router_routes() -> list[tuple[str, str, Any]]:
    """(method, canonical path, resource) of every route `create_app` registers."""
    services = SimpleNamespace(replicator=None, clock=SimpleNamespace(wall=time.time))
    app = create_app(DaemonConfig(), services)  # type: ignore[arg-type]
    return [(r.method, r.resource.canonical, r.resource) for r in app.router.routes()
            if r.resource is not None]


ROUTER = _router_routes()
ROUTES = [(method, path) for method, path, _ in ROUTER]
#: every (method, route) some request reached, by the router's own patterns, and the routes
#: the sweep below was run for
REACHED: set[tuple[str, str]] = set()
SWEPT: set[tuple[str, str]] = set()

FUNCTIONS = ["linear", "texty", "incy", "fuzzed"]
WORKFLOWS = ["pipe", "scratch"]
#: names a path may carry: what is deployed first (so the simplest example reaches the
#: route), then what is not, and names no route takes
NAMES = [*FUNCTIONS, *WORKFLOWS, "nope", "", "li%00near", "..", "%2e%2e", "a" * 300, "ünï",
         "linear/extra"]
#: the port of the callbacks the daemon accepts (discard: nothing listens on it here)
CLOSED_PORT = 9

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


call_bodies = st.one_of(
    st.just(b'{"x": [[1, 2, 3, 4]]}'),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    v2_documents().map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"1,2,3,4", b"bug", b"NaN", b'{"x": [[NaN, 1e400, 2, 3]]}',
                     b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", '
                     b'"data": [1, 2, 3, 4]}]}']),
)

#: header text http.client will send (no control characters; the parser tests cover those)
header_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                      max_size=12)


valid_callback_urls = st.builds(
    "{}://{}:{}{}".format, st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["127.0.0.1", "[::1]", "localhost"]), st.just(CLOSED_PORT),
    st.sampled_from(["/cb", "", "/%20?q=1#f", "/" + "p" * 300]))


@st.composite
def invalid_callback_urls(draw: st.DrawFn) -> str:
    """URLs the daemon must refuse: a host with a space, a bad port or scheme, or none."""
    scheme = draw(st.sampled_from(["http", "https", "ftp", "", "javascript"]))
    host = draw(st.one_of(
        st.sampled_from(["", "[::1", "a b", "-x-", "1.2.3.4.5", "[zz]", "127.0.0.1"]),
        header_text.map(lambda t: t + " x"),  # a space: never a host the daemon calls
    ))
    port = draw(st.sampled_from(["0", "99999", "-1", "abc", "65536", "1 2"]))
    return f"{scheme}://{host}:{port}/cb"


callback_urls = st.one_of(valid_callback_urls, invalid_callback_urls(), header_text)

#: headers most requests carry
headers = st.fixed_dictionaries({}, optional={
    "Idempotency-Key": header_text,
    "X-Callback-Url": callback_urls,
    "Accept": st.sampled_from(["*/*", "application/json", "text/html"]),
})
#: headers that end a request early (417, 403, a body that cannot be read, a type the route
#: does not take): on a few requests only, one at a time, so most reach their handler
_RARE = [
    st.fixed_dictionaries({"Expect": st.one_of(
        st.sampled_from(["100-continue", "foo", "100-Continue"]), header_text)}),
    st.fixed_dictionaries({"Origin": st.sampled_from(["http://127.0.0.1",
                                                      "https://evil.example"])}),
    st.fixed_dictionaries({"Content-Encoding": st.sampled_from(["gzip", "br", "identity",
                                                                "deflate"])}),
    st.fixed_dictionaries({"Content-Type": st.one_of(st.sampled_from(
        ["application/json", "text/plain", "image/png", "application/x-tar",
         "application/gzip", "", "a/b; c=d", "application/json; charset=\u00e9",
         "application/msgpack", "text/csv"]), header_text)}),
    st.fixed_dictionaries({"Inference-Header-Content-Length": st.one_of(
        st.integers(-5, 400).map(str), header_text)}),
]
rare_headers = st.sampled_from(range(3 * len(_RARE))).flatmap(
    lambda k: _RARE[k] if k < len(_RARE) else st.just({}))


@dataclass(frozen=True)
class Late:
    """A body, or part of one, only the live fixture has (an archive, a directory on the
    daemon's host, an id the daemon gave out), by kind and index."""

    kind: str
    index: int


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | Late | dict[str, Any] = b""
    #: parts of `path` to fill in once sent: {placeholder: Late}
    late_path: dict[str, Late] = field(default_factory=dict)


def _late(kind: str) -> st.SearchStrategy[Late]:
    return st.integers(0, 20).map(lambda i: Late(kind, i))


deploy_documents = st.fixed_dictionaries(
    {"path": _late("function_dir")},
    optional={"name": st.one_of(st.none(), st.sampled_from(NAMES), st.integers())})
workflow_documents = st.fixed_dictionaries(
    {"path": _late("workflow_dir")},
    optional={"name": st.one_of(st.none(), st.sampled_from(NAMES), st.integers())})
token_documents = st.one_of(
    st.fixed_dictionaries({
        "scope": st.sampled_from(["invoke", "admin", "invoke", "root", "", 3, None])}, optional={
        "name": st.one_of(st.none(), st.just("fz"), st.text(max_size=120), st.integers()),
        "expires": st.one_of(
            st.sampled_from(["30d", "1h", "0d", "-1h", "soon", "3650d", "3651d", "9" * 400 + "w",
                             "99999999d", "1e9", "", "1.5h"]),
            st.integers(-5, 10**20), st.floats()),
    }).map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b'{"scope": "invoke", "expires": NaN}', b"[]", b"{", b"",
                     b'{"scope": "invoke", "expires": Infinity}']),
)
msgpack_bodies = st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                 | st.text(max_size=10) | st.binary(max_size=10),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda v: msgpack.packb(v)),
)


def _body(method: str, route: str) -> st.SearchStrategy[tuple[Any, dict[str, str], str]]:
    """(body, headers it needs, query) for a request to `route`; routes not named here (a new
    one, say) get every kind of body."""
    none: dict[str, str] = {}
    as_json = {"Content-Type": "application/json"}
    if route == "/system/functions" and method in ("POST", "PUT"):
        upload = st.tuples(
            _late("archive"), st.sampled_from(TAR_TYPES).map(lambda t: {"Content-Type": t}),
            st.one_of(st.just(""),
                      st.sampled_from(NAMES).map(lambda n: "?name=" + urllib.parse.quote(n))))
        return st.one_of(upload, st.tuples(deploy_documents, st.just(as_json), st.just("")))
    if route == "/system/functions" and method == "DELETE":
        doc = st.fixed_dictionaries({"functionName": st.sampled_from(["nope", "", 3, "fuzzed",
                                                                      "linear"])})
        return st.one_of(st.tuples(doc.map(lambda d: json.dumps(d).encode()), st.just(as_json),
                                   st.just("")),
                         st.tuples(st.just(b""), st.just(none), st.sampled_from(
                             ["?name=nope", "?name=fuzzed", "?name="])))
    if route == "/system/workflows" and method in ("POST", "PUT"):
        return st.tuples(workflow_documents, st.just(as_json), st.just(""))
    if route == "/system/workflows" and method == "DELETE":
        doc = st.fixed_dictionaries({"name": st.sampled_from(["scratch", "nope", "", 3])})
        return st.tuples(doc.map(lambda d: json.dumps(d).encode()), st.just(as_json),
                         st.just(""))
    if route == "/system/tokens" and method == "POST":
        return st.tuples(token_documents, st.just(as_json), st.just(""))
    if route.startswith("/system/cluster/") or route.endswith("/state"):
        return st.tuples(msgpack_bodies, st.just({"Content-Type": "application/msgpack"}),
                         st.just(""))
    if route.startswith("/system/profile/") and method == "POST":
        return st.tuples(st.just(b""), st.just(none),
                         st.sampled_from(["?kind=small", "?kind=full", "?kind=x", ""]))
    if route == "/system/invocations":
        return st.tuples(st.just(b""), st.just(none), st.sampled_from(
            ["", "?function=linear&limit=5", "?workflow=pipe", "?name=x&function=y",
             "?limit=-5", "?limit=abc", "?function=" + "a" * 300]))
    if method in ("GET", "DELETE"):
        return st.tuples(st.one_of(st.just(b""), call_bodies), st.just(none), st.just(""))
    kind = st.sampled_from([as_json, as_json, none, {"Content-Type": "text/plain"}])
    return st.tuples(call_bodies, kind, st.just(""))


PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _placeholder(route: str, key: str) -> st.SearchStrategy[str | Late]:
    if key == "version":
        return st.sampled_from(["1", "2", "0", "x", "-1", "9" * 30])
    if key == "id":
        return st.one_of(_late("call_id"), st.sampled_from(["0" * 32, "nope", "a" * 300]))
    if key == "token":  # never the fixture's own tokens' names: revoking them ends the fuzz
        return st.sampled_from(["nope", "fz", "", "x" * 300, "%2e%2e", "ünï"])
    if route.startswith("/system/nodes/"):
        return st.sampled_from([socket.gethostname(), *NAMES])
    return st.sampled_from(NAMES)


@st.composite
def requests_for(draw: st.DrawFn, method: str, route: str) -> Request:
    path, late_path = route, {}
    for key in PLACEHOLDER.findall(route):
        value = draw(_placeholder(route, key))
        if isinstance(value, Late):
            late_path[key] = value
        else:
            path = path.replace("{" + key + "}", urllib.parse.quote(value, safe="%/."), 1)
    body, needed, query = draw(_body(method, route))
    return Request(method, path + query, {**draw(headers), **needed, **draw(rare_headers)},
                   body, late_path)


@st.composite
def any_requests(draw: st.DrawFn) -> Request:
    """A route's request, often with another method, or a path no route has."""
    method, route = draw(st.sampled_from(ROUTES))
    request = draw(requests_for(method, route))
    twist = draw(st.sampled_from(["none", "none", "method", "path"]))
    if twist == "method":
        request.method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH",
                                               "HEAD", "OPTIONS"]))
    elif twist == "path":
        request.path = draw(st.sampled_from(["/", "/function", "/system", "/v2/models",
                                             "/system/function/linear/archive/x", "/%ff",
                                             "/" + "z" * 1000]))
    return request


# ---------------------------------------------------------------- the daemon


class Fuzzed:
    """The live daemon, its tokens, and what `Late` parts stand for. Not a dataclass: a
    failing example prints it, and its archives would take pages."""

    def __init__(self, daemon: DaemonProcess, tokens: dict[str, str],
                 late: dict[str, list[Any]]) -> None:
        self.daemon, self.tokens, self.late = daemon, tokens, late

    def __repr__(self) -> str:
        return f"Fuzzed(port={self.daemon.port})"


def _archives(tmp: Path) -> list[bytes]:
    """Uploads, valid and broken: the valid ones deploy `fuzzed` (or ?name=)."""
    good = make_function(tmp / "archive", "fuzzed", "timeout_s: 5\n")
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        tar.add(good, arcname="fuzzed")
    escape, link = io.BytesIO(), io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with tarfile.open(fileobj=link, mode="w:gz") as tar:
        info = tarfile.TarInfo("fuzzed/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    nan = make_function(tmp / "archive-nan", "fuzzed", "slo_ms: .nan\n")
    long_name = io.BytesIO()
    with gzip.GzipFile(fileobj=long_name, mode="wb") as packed:
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = tarfile.GNUTYPE_LONGNAME, 2**21 + 1
        packed.write(header.tobuf(tarfile.GNU_FORMAT) + b"a" * 2**21 + b"\0")
        packed.write(bytes(-header.size % 512) + bytes(1024))
    valid = pack(good)
    return [valid, plain.getvalue(), valid[: len(valid) // 2], b"\x1f\x8b" + bytes(50),
            escape.getvalue(), link.getvalue(), pack(nan), long_name.getvalue(), b"",
            b"not a tar at all", gzip.compress(b"\0" * 1024)]


def _directories(tmp: Path) -> tuple[list[str], list[str]]:
    """(function directories, workflow directories) a deploy may name: valid, broken,
    missing, relative; all inside the test's directory."""
    fn = make_function(tmp / "deployable", "fuzzed")
    broken = make_function(tmp / "deployable", "broken", "slo_ms: .inf\n")
    scratch = workflow_dir(tmp / "wf", "scratch",
                           "slo_ms: 1000\nfunctions: [linear, incy]\n"
                           "edges: [{from: linear, to: incy}]\n")
    nan = workflow_dir(tmp / "wf", "nanslo", "slo_ms: .nan\nfunctions: [linear]\nedges: []\n")
    cycle = workflow_dir(tmp / "wf", "cycle",
                         "slo_ms: 100\nfunctions: [linear, incy]\nedges: [{from: linear, to: "
                         "incy}, {from: incy, to: linear}]\n")
    common = ["relative/dir", "/nonexistent/fn", "", str(tmp / "archive" / "fuzzed" /
                                                         "model.onnx")]
    return ([str(fn), str(broken), str(scratch), *common],
            [str(scratch), str(nan), str(cycle), str(fn), *common])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    functions, workflows = tmp / "functions", tmp / "workflows"
    linear = make_function(functions, "linear", "batching: {max_batch_size: 4}\n")
    (linear / "sample.json").write_text(json.dumps({"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}))
    make_function(functions, "texty", "timeout_s: 5\n", TEXT_HANDLER)
    write_op_model(functions / "incy" / "model.onnx", ["y"], "z", "Add", 1.0, width=3)
    workflow_dir(workflows, "pipe", "slo_ms: 5000\nfunctions: [linear, incy]\n"
                                    "edges: [{from: linear, to: incy}]\n")
    store = TokenStore(tmp / "state")
    tokens = {scope.value: store.create(scope, scope.value, None, time.time())[1]
              for scope in Scope}
    function_dirs, workflow_dirs = _directories(tmp)
    daemon = start_daemon(tmp, functions, "--workflows", str(workflows))
    late = {"archive": _archives(tmp), "function_dir": function_dirs,
            "workflow_dir": workflow_dirs, "call_id": []}
    yield Fuzzed(daemon, tokens, late)
    assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "unexpected error on" not in log, log[-3000:]  # faasd's 500s
    assert not any(token in log for token in tokens.values())  # never logged


def _resolve(fuzzed: Fuzzed, request: Request) -> tuple[str, bytes]:
    def pick(late: Late) -> Any:
        options = fuzzed.late[late.kind]
        return options[late.index % len(options)] if options else "0" * 32

    path = request.path
    for key, late in request.late_path.items():
        path = path.replace("{" + key + "}", urllib.parse.quote(str(pick(late)), safe=""), 1)
    body = request.body
    if isinstance(body, Late):
        body = pick(body)
    elif isinstance(body, dict):
        body = json.dumps({k: pick(v) if isinstance(v, Late) else v
                           for k, v in body.items()}).encode()
    assert isinstance(body, bytes)
    return path, body


def _reached(method: str, path: str) -> None:
    plain = urllib.parse.unquote(path.split("?", 1)[0])
    for route_method, route, resource in ROUTER:
        info = resource.get_info()
        matched = (plain == info["path"]) if "path" in info else bool(
            info["pattern"].fullmatch(plain))
        if matched and method == route_method:
            REACHED.add((route_method, route))


def _strict(body: bytes) -> Any:
    return json.loads(body, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def _send(fuzzed: Fuzzed, request: Request,
          authorization: str | None = "admin") -> tuple[int, str, bytes]:
    path, body = _resolve(fuzzed, request)
    head = dict(request.headers)
    if authorization in fuzzed.tokens:
        head["Authorization"] = f"Bearer {fuzzed.tokens[authorization]}"
    elif authorization is not None:
        head["Authorization"] = authorization
    connection = http.client.HTTPConnection("127.0.0.1", fuzzed.daemon.port, timeout=60)
    try:
        connection.putrequest(request.method, path, skip_accept_encoding=True)
        for key, value in head.items():
            connection.putheader(key, value.encode("utf-8", "surrogateescape"))
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        resp = connection.getresponse()
        answer = (resp.status, resp.getheader("Content-Type", ""), resp.read())
        call_id = resp.getheader("X-Call-Id")
    finally:
        connection.close()
    _reached(request.method, path)
    if call_id and answer[0] < 300:
        fuzzed.late["call_id"].append(call_id)
    return answer


def _check(request: Request, status: int, content_type: str, answer: bytes) -> None:
    """The properties every answer has (see the module doc)."""
    where = (request.method, request.path[:120], status, answer[:300])
    assert status < 500 or status in (502, 503, 504), where
    if request.method == "HEAD":  # no body comes back
        assert status < 400 or content_type.startswith("application/json"), where
        return
    if status >= 400:
        assert content_type.startswith("application/json"), (*where, content_type)
        assert isinstance(_strict(answer)["error"], str), where
    elif content_type.startswith("application/x-ndjson"):
        for line in answer.splitlines():
            _strict(line)
    elif "json" in content_type:
        _strict(answer)


FUZZ = settings(deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def _answered_before_auth(request: Request, status: int, answer: bytes) -> bool:
    """What is answered before any token is looked at: a request aiohttp's parser refuses
    (400), and an `Expect` other than 100-continue (417: aiohttp runs expect handlers before
    the middlewares)."""
    if status == 400 and request.method == "HEAD":
        # An answer to HEAD has no body to read the error from; without a token the token
        # check answers 401 before any handler could answer 400, so this 400 is the parser's.
        return True
    if status == 400:
        return bool(_strict(answer)["error"].startswith("the HTTP request cannot be parsed"))
    expect = request.headers.get("Expect")
    return status == 417 and expect is not None and expect.lower() != "100-continue"


# ---------------------------------------------------------------- the properties


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m} {r}" for m, r in ROUTES])
@settings(FUZZ, max_examples=8)
@given(data=st.data())
def test_every_route_answers_json_and_never_a_500(live: Fuzzed, method: str, route: str,
                                                  data: st.DataObject) -> None:
    SWEPT.add((method, route))
    request = data.draw(requests_for(method, route))
    _check(request, *_send(live, request))


@settings(FUZZ, max_examples=150)
@given(request=any_requests())
def test_no_request_gets_a_500_and_every_error_is_json(live: Fuzzed, request: Request) -> None:
    _check(request, *_send(live, request))


@settings(FUZZ, max_examples=100)
@given(request=any_requests(), who=st.sampled_from(["none", "invoke", "admin", "junk",
                                                    "basic", "odd"]))
def test_with_tokens_every_answer_is_json_and_scoped(live: Fuzzed, request: Request,
                                                     who: str) -> None:
    auth = {"none": None, "invoke": "invoke", "admin": "admin", "junk": "Bearer fdt_junk",
            "basic": "Basic YTpi", "odd": "Bearer \u00e9\u00e9"}[who]
    status, content_type, answer = _send(live, request, auth)
    _check(request, status, content_type, answer)
    open_path = request.path == "/healthz" or request.path.startswith("/v2/health/")
    if _answered_before_auth(request, status, answer):
        return
    if who in ("none", "junk", "basic", "odd") and not open_path:
        assert status == 401, (who, request.method, request.path, status, answer[:300])
    if who == "invoke" and request.path.startswith("/system/functions"):
        assert status == 403


def test_the_daemon_is_healthy_after_the_fuzzing(live: Fuzzed) -> None:
    request = Request("GET", "/healthz", {})
    status, _, answer = _send(live, request)
    assert status == 200 and _strict(answer)["status"] == "ok"
    request = Request("POST", "/function/linear", {"Content-Type": "application/json"},
                      b'{"x": [[1, 2, 3, 4]]}')
    status, _, answer = _send(live, request)
    assert status == 200, answer
    missed = sorted(SWEPT - REACHED)  # every route, when the whole module runs
    assert not missed, f"routes no request reached: {missed}"
