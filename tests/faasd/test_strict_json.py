"""Every JSON document the API writes is strict JSON: no NaN or Infinity leaves the daemon."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from faasd.api.errors import json_errors
from faasd.api.invocations import describe
from faasd.api.strict_json import dumps, json_response
from faasd.durable.store import Call, State
from tests.faasd.builders import served

API = Path(__file__).parents[2] / "faasd" / "api"


def strict(text: str | bytes) -> object:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, {"x": math.nan}]])
def test_dumps_refuses_what_is_not_json(value: object) -> None:
    with pytest.raises(ValueError):
        dumps({"v": value})


def test_every_api_module_renders_through_the_strict_writer() -> None:
    """A handler added later cannot write NaN by calling aiohttp's or json's own writer
    (orjson, which writes them as null, is strict already)."""
    for module in sorted(API.glob("*.py")):
        if module.name == "strict_json.py":
            continue
        text = module.read_text()
        assert not re.search(r"web\.json_response\(|\bjson\.dumps\(", text), module.name


async def _nan(request: web.Request) -> web.Response:
    return json_response({"slo_ms": math.nan})


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/nan", _nan)
    async with served(app) as base:
        yield base


async def test_a_nan_that_reaches_an_answer_is_a_logged_500_not_invalid_json(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/nan") as resp:
        assert resp.status == 500
        assert "internal error" in strict(await resp.read())["error"]  # type: ignore[index]
    assert "unexpected error on GET /nan" in caplog.text


def test_a_recorded_json_answer_with_nan_is_described_as_base64() -> None:
    """A handler may answer `application/json` bodies with NaN in them (its own bytes): the
    call's description carries them as base64, as any body that is not JSON."""
    call = Call(id="c", name="f", state=State.SUCCEEDED, body=b"", content_type="",
                header_length=None, callback_url=None, idem_key=None, fingerprint="",
                attempts=1, created_s=1.0, started_s=1.0, finished_s=2.0, status_code=200,
                result_type="application/json", result=b'{"y": NaN}')
    doc = describe(call)
    assert "result" not in doc and doc["result_base64"]
    strict(dumps(doc))
    good = describe(Call(**{**call.__dict__, "result": b'{"y": 1}'}))
    assert good["result"] == {"y": 1}
