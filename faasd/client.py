"""A small blocking HTTP client for the CLI (standard library only: it must work anywhere).

Every failure is a `ClientError` with a one-line message for people: the daemon is down, or
the daemon's own JSON error text.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """`exit_code` 2 = the daemon cannot be reached, 1 = it answered with an error."""

    def __init__(self, message: str, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


def gateway_url(flag: str | None) -> str:
    """The daemon's base URL: `--gateway`, else $FAASD_URL, else the default. `host:port`
    alone means http://host:port, the form tritonclient takes; anything that is not an http(s)
    URL with a host and a valid port is a ClientError that says so."""
    raw = (flag or os.environ.get("FAASD_URL") or DEFAULT_URL).strip()
    url = raw if "://" in raw else f"http://{raw}"
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or past 65535
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ClientError(
            f"{raw!r} is not a daemon URL: give --gateway / FAASD_URL as http://HOST:PORT, "
            f"e.g. {DEFAULT_URL}"
        )
    return url.rstrip("/")


class Client:
    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return Reply(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            raise ClientError(_error_text(exc), status=exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise _unreachable(self.url, exc) from None

    def lines(self, method: str, path: str) -> Iterator[bytes]:
        """The answer's lines as they arrive (a streamed `application/x-ndjson` answer)."""
        req = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                for line in resp:
                    if line.strip():
                        yield line
        except urllib.error.HTTPError as exc:
            raise ClientError(_error_text(exc), status=exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise _unreachable(self.url, exc) from None

    def json(self, method: str, path: str, doc: Any | None = None) -> Any:
        body = None if doc is None else json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        return self.request(method, path, body, headers).json()


def _unreachable(url: str, exc: Exception) -> ClientError:
    reason = getattr(exc, "reason", exc)
    return ClientError(
        f"cannot reach the faasd daemon at {url} ({reason}); start it with "
        "`faasd up` or point --gateway / FAASD_URL at it",
        exit_code=2,
    )


def _error_text(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        doc = json.loads(raw)
        message = str(doc["error"])
        if doc.get("file"):
            message += f" (file: {doc['file']})"
    except (ValueError, KeyError, TypeError):
        message = raw.decode(errors="replace").strip() or exc.reason
    return f"{message} [HTTP {exc.code}]"
