"""Counting how often a function really ran each call, across nodes: its handler tells an HTTP
server of the test (`Recorder`) the call's key, and where it runs, before it runs the model.
With `network: true` the sandbox shares the host's network, so every node's sandboxes reach the
same recorder. A key counted twice is a call run twice."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Container
from pathlib import Path

from tests.faasd.builders import make_function

#: Reports call `k` (the body, as text) to $RECORDER with the sandbox's working directory (the
#: function's directory in its node's state directory, bound at the same path), then holds the
#: sandbox `$HOLD_S`: a node killed meanwhile is killed mid-batch.
RECORDING = """
import os
import time
import urllib.parse
import urllib.request

import numpy as np


def preprocess(body, content_type):
    k = body.decode()
    at = urllib.parse.quote(os.getcwd())
    urllib.request.urlopen(f"{os.environ['RECORDER']}/{k}?at={at}", timeout=5).read()
    time.sleep(float(os.environ["HOLD_S"]))
    return {"x": np.array([[float(k), 0, 0, 0]], dtype=np.float32)}
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the stdlib names it so
        recorder: Recorder = self.server.recorder  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        k = url.path.lstrip("/")
        at = urllib.parse.parse_qs(url.query).get("at", [""])[0]
        with recorder.lock:
            recorder.runs[k] += 1
            recorder.started[k] = (at, time.monotonic())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


class Recorder:
    """An HTTP server on 127.0.0.1 counting `GET /k` by k, in a thread of its own."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        #: key: (the directory it last started in, when)
        self.started: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.recorder = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def running_under(self, directory: Path, answered: Container[str], within_s: float) -> bool:
        """True while a call that started under `directory` (a node's state directory) less
        than `within_s` ago is not answered yet: that node is running it now."""
        now = time.monotonic()
        with self.lock:
            return any(at.startswith(f"{directory}/") and now - when < within_s
                       and k not in answered for k, (at, when) in self.started.items())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def function(self, root: Path, name: str, idempotent: bool, hold_s: float,
                 slo_ms: float | None = None) -> Path:
        """A one-call-a-batch function that reports each call here before it runs."""
        yaml = (f"batching: {{max_batch_size: 1}}\nnetwork: true\n"
                f"env: {{RECORDER: '{self.url}', HOLD_S: '{hold_s}'}}\n"
                f"idempotent: {'true' if idempotent else 'false'}\n"
                + ("" if slo_ms is None else f"slo_ms: {slo_ms:g}\n"))
        return make_function(root, name, handler=RECORDING, yaml=yaml)
