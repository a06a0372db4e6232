"""Every JSON document the API writes is strict JSON (RFC 8259): no NaN or Infinity.

Python's `json` writes them by default, and strict parsers (Go's, JavaScript's `JSON.parse`,
orjson, `faasd token list`'s own dates) refuse the document or fail on the value. Settings
are checked finite where they are parsed, so a value that is not finite here is a bug
upstream: rendering it raises, and `json_errors` answers 500 and logs it, rather than send a
document a client cannot parse. (A model's output tensors are another matter: their NaN and
infinities are written as the strings "NaN", "Infinity" and "-Infinity", see `faasd.v2`.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web


def dumps(doc: Any) -> str:
    """`doc` as strict JSON; ValueError for a float that is not finite."""
    return json.dumps(doc, allow_nan=False)


def json_response(doc: Any, *, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """`web.json_response`, strict (see the module doc)."""
    return web.json_response(doc, status=status, headers=headers, dumps=dumps)
