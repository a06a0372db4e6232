"""X-Callback-Url is checked whole when a call is accepted: what passes can be called."""

from __future__ import annotations

import urllib.parse

import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from faasd.api.callback_url import checked_callback_url
from faasd.errors import BadRequest

hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "[::1]", "localhost", "a b", "", "[::1", "-x-", "1.2.3.4.5",
                     "ünï.example", "exa_mple.com", "h" * 64, "a..b"]),
    st.text(max_size=12),
)
ports = st.one_of(st.none(), st.integers(-5, 70_000).map(str), st.text(max_size=5))


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", ""]))
    port = draw(ports)
    path = draw(st.sampled_from(["/cb", "", "/a b", "/%20?q=1#f"]))
    return f"{scheme}://{draw(hosts)}{'' if port is None else ':' + port}{path}"


@given(st.one_of(urls(), st.text(max_size=40)))
def test_a_url_is_accepted_only_if_it_can_be_called(raw: str) -> None:
    try:
        accepted = checked_callback_url(raw)
    except BadRequest as exc:
        assert "X-Callback-Url" in exc.message and len(exc.message) < 600
        return
    assert accepted == raw
    parts = urllib.parse.urlsplit(raw)
    assert parts.scheme.lower() in ("http", "https") and parts.hostname
    assert parts.port is None or 1 <= parts.port <= 65535
    url = yarl.URL(raw)
    assert url.host and url.port is not None and 1 <= url.port <= 65535


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cb", "https://[::1]:8000/x",
                                 "http://localhost/cb?x=1", "http://ünï.example/cb",
                                 "http://user:pw@h:80/", "HTTPS://H/"])
def test_callable_urls_pass(url: str) -> None:
    assert checked_callback_url(url) == url
