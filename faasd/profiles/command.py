"""`faasd profile NAME [--show] [--png FILE] [--small]`: the client side of profiles.

Without `--show` or `--png` it runs a profile (`POST /system/profile/NAME`) and follows its
progress: a bar on stderr when stderr is a terminal, one plain line a point on stdout
otherwise (`-o json`: the events as they come, one JSON object a line); then it prints the
table. `--show` prints the stored table, `--png FILE` draws it; neither runs a profile.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from faasd.client import Client, ClientError
from faasd.profiles.render import draw_png, format_table, point_line, progress_bar


def run(client: Client, name: str, output: str, show: bool, png: Path | None,
        small: bool) -> int:
    if not show and png is None:
        _profile(client, name, output, small)
        if output == "json":
            return 0  # the events were the output
    doc = client.json("GET", f"/system/profile/{name}")
    if png is not None:
        try:
            draw_png(doc, png)
        except ImportError:
            raise ClientError("--png needs matplotlib: pip install 'faasd[sim]' "
                              "(make test installs it)") from None
        print(f"wrote {png}", file=sys.stderr)
        if not show:
            return 0
    if output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(doc))
    return 0


def _profile(client: Client, name: str, output: str, small: bool) -> None:
    path = f"/system/profile/{name}" + ("?kind=small" if small else "")
    bar = output == "table" and sys.stderr.isatty()
    for raw in client.lines("POST", path):
        event: dict[str, Any] = json.loads(raw)
        if output == "json":
            print(json.dumps(event), flush=True)
        kind = event.get("event")
        if kind == "error":
            if bar:
                sys.stderr.write("\n")
            raise ClientError(f"{event['error']} [HTTP {event.get('status', 500)}]")
        if output == "json":
            continue
        if kind == "start":
            print(f"profiling {event['function']} v{event['version']}: {event['measure']} "
                  f"configurations measured {event['repetitions']} times each, "
                  f"{event['grid'] - event['measure']} fitted", file=sys.stderr)
        elif kind == "point" and bar:
            sys.stderr.write("\r\033[K" + progress_bar(event))
            sys.stderr.flush()
        elif kind == "point":
            print(point_line(event), flush=True)
        elif kind == "done" and bar:
            sys.stderr.write("\n")
