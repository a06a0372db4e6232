"""A function's sample request as the item a sandbox runs: what every profile measures with.

The sample is a file of the deployed version's directory, the first of `SAMPLE_FILES` that
exists (`sample.json`: a V2 inference request or `{"<input>": nested lists}`; `sample.png` /
`.jpg` / `.jpeg`: a body for the handler's `preprocess`). It is parsed exactly as
`POST /function/{name}` would parse it, so a profile measures what a real call runs.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from faasd.errors import BadRequest, FaasdError
from faasd.functions.loader import SAMPLE_FILES
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.gateway import parse_payload
from faasd.sandbox.items import Item


class NoSample(BadRequest):
    """The function has no usable sample request; the message says which file to add."""


def sample_path(version: FunctionVersion) -> Path | None:
    for name in SAMPLE_FILES:
        path = version.directory / name
        if path.is_file():
            return path
    return None


def load_sample(version: FunctionVersion, info: ModelInfo) -> Item:
    """The version's sample request as one call's item; NoSample when there is none or it
    does not fit the model (the message names the file and the fix)."""
    path = sample_path(version)
    if path is None:
        raise NoSample(
            f"{version.name} has no sample request to profile with: add sample.json (a V2 "
            f'inference request, or {{"<input name>": nested lists}}) or sample.png / '
            f"sample.jpg (for a handler's preprocess) to its directory and redeploy it"
        )
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        payload = parse_payload(version, info, path.read_bytes(), content_type, None)
    except FaasdError as exc:
        raise NoSample(
            f"{version.name}'s {path.name} cannot be used as a request: {exc.message}; fix it "
            "and redeploy", file=path.name
        ) from None
    return payload.item
