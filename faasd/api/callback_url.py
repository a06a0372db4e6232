"""`X-Callback-Url`: whether the daemon can POST an async call's answer to it.

Checked when the call is accepted, so that a URL that cannot be called is a 400 then, not a
failure after the call's last delivery attempt (`faasd.durable.runner` delivers it).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

import yarl

from faasd.errors import BadRequest, clip

#: A DNS name as a URL may carry it: dot-separated labels of letters, digits, '-' and '_'
_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")


def checked_callback_url(raw: str) -> str:
    """`raw` if the daemon can POST to it: an http or https URL without spaces or control
    characters, with a host (a DNS name or an IP address) and, if it names one, a port from
    1 to 65535. BadRequest, saying what is wrong, otherwise: a URL that cannot be called is
    refused now, not after the call's last delivery attempt."""
    shown = clip(raw)
    how = "send an absolute URL such as http://127.0.0.1:8000/callback"
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise BadRequest(f"X-Callback-Url {shown!r} holds spaces or control characters; "
                         "percent-encode them")
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError as exc:
        raise BadRequest(f"X-Callback-Url {shown!r} is not a valid URL ({exc}); {how}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise BadRequest(f"X-Callback-Url must be an http or https URL, got {shown!r}; {how}")
    host = parts.hostname
    if not host:
        raise BadRequest(f"X-Callback-Url {shown!r} names no host; {how}")
    if not _valid_host(host):
        raise BadRequest(f"X-Callback-Url {shown!r} has an invalid host {clip(host)!r}; {how}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise BadRequest(f"X-Callback-Url {shown!r} has an invalid port; a port is a number "
                         "from 1 to 65535")
    try:
        yarl.URL(raw)  # what aiohttp parses when it delivers the answer
    except ValueError as exc:
        raise BadRequest(f"X-Callback-Url {shown!r} is not a valid URL ({exc}); {how}") from None
    return raw


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name whose last label is not a number (a name like 1.2.3.4.5
    is an IPv4 address gone wrong, as URL parsers read it)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return (len(ascii_host) <= 253 and _HOST_NAME.match(ascii_host) is not None
            and not ascii_host.rstrip(".").rsplit(".", 1)[-1].isdigit())
