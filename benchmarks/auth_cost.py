"""What the token check costs each request: `faasd.auth` as the middleware runs it.

Times `authorize(cache.records(), header, rules.required(...))` for a V2 inference path, with
no token on record (the file absent: one failed open per request) and with an invoke token
(open, fstat, 4-byte pread, close, SHA-256, a dict lookup).

Usage: python benchmarks/auth_cost.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from faasd.auth.store import TokenCache, TokenStore
from faasd.auth.tokens import AccessRules, Scope, authorize


def per_request_us(requests: int) -> dict[str, float]:
    rules = AccessRules()
    with tempfile.TemporaryDirectory() as scratch:
        cache = TokenCache(Path(scratch))

        def check(header: str | None) -> int:
            required = rules.required("POST", "/v2/models/m/infer")
            return authorize(cache.records(), header, required, time.time()).status

        started = time.perf_counter()
        for _ in range(requests):
            check(None)
        open_api = (time.perf_counter() - started) / requests
        _, token = TokenStore(Path(scratch)).create(Scope.INVOKE, "bench", None, time.time())
        header = f"Bearer {token}"
        assert check(header) == 200
        started = time.perf_counter()
        for _ in range(requests):
            check(header)
        with_token = (time.perf_counter() - started) / requests
    return {"no_token_on_record_us": round(open_api * 1e6, 2),
            "invoke_token_us": round(with_token * 1e6, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    print(json.dumps(per_request_us(parser.parse_args().requests), indent=2))
