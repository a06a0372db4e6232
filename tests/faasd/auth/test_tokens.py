"""The pure token core: which path needs which scope, and the verdict matrix."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faasd.auth.tokens import (
    MAX_LIFETIME_S,
    AccessRules,
    Scope,
    TokenRecord,
    authorize,
    digest,
    exposure_error,
    is_loopback,
    json_time,
    parse_duration_s,
)

NOW = 1_000_000.0


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/healthz", None),
    ("GET", "/v2/health/live", None),
    ("GET", "/v2/health/ready", None),
    ("POST", "/function/linear", Scope.INVOKE),
    ("POST", "/async-function/linear", Scope.INVOKE),
    ("POST", "/workflow/pipeline", Scope.INVOKE),
    ("POST", "/async-workflow/pipeline", Scope.INVOKE),
    ("POST", "/v2/models/linear/infer", Scope.INVOKE),
    ("GET", "/v2/models/linear", Scope.INVOKE),
    ("GET", "/v2", Scope.INVOKE),
    ("GET", "/system/invocations/abc", Scope.INVOKE),
    ("GET", "/system/invocations", Scope.INVOKE),
    ("DELETE", "/system/invocations/abc", Scope.ADMIN),
    ("GET", "/system/invocationsX", Scope.ADMIN),
    ("POST", "/system/functions", Scope.ADMIN),
    ("DELETE", "/system/functions", Scope.ADMIN),
    ("GET", "/system/functions", Scope.ADMIN),
    ("POST", "/system/workflows", Scope.ADMIN),
    ("GET", "/metrics", Scope.ADMIN),
    ("GET", "/some/route/added/later", Scope.ADMIN),  # default: admin, never open
    ("GET", "/healthz/x", Scope.ADMIN),
    ("GET", "/functionx", Scope.ADMIN),
])
def test_every_path_needs_its_scope(method: str, path: str, scope: Scope | None) -> None:
    assert AccessRules().required(method, path) == scope


def test_metrics_access_is_configurable() -> None:
    assert AccessRules(metrics="invoke").required("GET", "/metrics") == Scope.INVOKE
    assert AccessRules(metrics="open").required("GET", "/metrics") is None


def _records(*records: TokenRecord) -> dict[str, TokenRecord]:
    return {r.digest: r for r in records}


INVOKE = TokenRecord("i1", "caller", Scope.INVOKE, digest("fdt_invoke"), NOW - 10)
ADMIN = TokenRecord("a1", "ops", Scope.ADMIN, digest("fdt_admin"), NOW - 10)
EXPIRED = TokenRecord("e1", "old", Scope.ADMIN, digest("fdt_expired"), NOW - 10, NOW - 1)
REVOKED = TokenRecord("r1", "gone", Scope.ADMIN, digest("fdt_revoked"), NOW - 10, None, NOW - 5)
ALL = _records(INVOKE, ADMIN, EXPIRED, REVOKED)


@pytest.mark.parametrize(("header", "required", "status", "fragment"), [
    (None, Scope.INVOKE, 401, "needs an API token"),
    ("", Scope.ADMIN, 401, "needs an API token"),
    ("Basic dXNlcjpwYXNz", Scope.INVOKE, 401, "must be `Bearer TOKEN`"),
    ("Bearer", Scope.INVOKE, 401, "must be `Bearer TOKEN`"),
    ("Bearer fdt_wrong", Scope.INVOKE, 401, "unknown or revoked"),
    ("Bearer fdt_revoked", Scope.INVOKE, 401, "unknown or revoked"),
    ("Bearer fdt_expired", Scope.INVOKE, 401, "'old' has expired"),
    ("Bearer fdt_invoke", Scope.ADMIN, 403, "scope invoke; this path needs an admin token"),
    ("Bearer fdt_invoke", Scope.INVOKE, 200, ""),
    ("bearer  fdt_invoke ", Scope.INVOKE, 200, ""),
    ("Bearer fdt_admin", Scope.INVOKE, 200, ""),
    ("Bearer fdt_admin", Scope.ADMIN, 200, ""),
    (None, None, 200, ""),
])
def test_the_token_matrix(header: str | None, required: Scope | None, status: int,
                          fragment: str) -> None:
    verdict = authorize(ALL, header, required, NOW)
    assert verdict.status == status
    assert fragment in verdict.message
    assert "fdt_" not in verdict.message.replace("faasd token", "")  # never echoes a token


def test_no_token_on_record_leaves_the_api_open_but_a_revoked_one_does_not() -> None:
    assert authorize({}, None, Scope.ADMIN, NOW).status == 200
    assert authorize(_records(REVOKED), None, Scope.ADMIN, NOW).status == 401
    assert authorize(_records(EXPIRED), None, Scope.INVOKE, NOW).status == 401


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("15m", 900), ("90s", 90), ("3600", 3600),
    ("2w", 14 * 86400), ("1.5h", 5400),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1h", "soon", "1y", "1 day"])
def test_bad_durations_say_how(text: str) -> None:
    with pytest.raises(ValueError, match=r"write e\.g\. 30d"):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["9" * 400 + "w", "99999999d", "3651d", "522w", "999999999"])
def test_lifetimes_past_ten_years_are_refused(text: str) -> None:
    """`999…9w` became an expiry of Infinity (GET /system/tokens answered it, `token list`
    crashed on it), `99999999d` a year no date can show: both refused before storing."""
    with pytest.raises(ValueError, match="longer than 10 years") as refused:
        parse_duration_s(text)
    assert len(str(refused.value)) < 300


def test_ten_years_is_the_longest_lifetime() -> None:
    assert parse_duration_s("3650d") == MAX_LIFETIME_S


@given(st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{1,5})?[smhdw]?\Z"))
def test_an_accepted_lifetime_is_finite_and_at_most_ten_years(text: str) -> None:
    try:
        seconds = parse_duration_s(text)
    except ValueError:
        return
    assert math.isfinite(seconds) and 0 < seconds <= MAX_LIFETIME_S


@pytest.mark.parametrize(("stored", "shown"), [
    (None, None), (1.5, 1.5), (math.inf, None), (-math.inf, None), (math.nan, None)])
def test_stored_times_as_json(stored: float | None, shown: float | None) -> None:
    assert json_time(stored) == shown


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
    ("192.168.1.5", False), ("example.org", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_needs_a_live_token() -> None:
    message = exposure_error("0.0.0.0", _records(EXPIRED, REVOKED), NOW, "/var/lib/faasd")
    assert message is not None and "\n" not in message
    assert "faasd token create --scope admin --state-dir /var/lib/faasd" in message
    assert exposure_error("0.0.0.0", _records(INVOKE), NOW, "s") is None
    assert exposure_error("127.0.0.1", {}, NOW, "s") is None
