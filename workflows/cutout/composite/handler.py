"""composite: coverage and thumbnail tensors -> the cut-out as JSON.

    {"coverage": 0.42,                  the foreground's share of the 224×224 crop, 0..1
     "box": [x0, y0, x1, y1] | null,    where the foreground is, in the crop's pixels
     "thumbnail": {"width": 56, "height": 56, "format": "png", "base64": "..."}}

The thumbnail is the model's RGBA picture: the background black and transparent, the
foreground in its colours. `box` bounds the thumbnail's pixels that are at least half opaque,
scaled to the 224×224 crop (x1, y1 exclusive); null when there are none. No preprocess: the
function takes tensors (the picture and its mask), alone or in a workflow.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

CROP = 224
OPAQUE = 128


def box(alpha: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of alpha >= OPAQUE, in CROP pixels (x1, y1 exclusive); None if empty."""
    rows = np.flatnonzero((alpha >= OPAQUE).any(axis=1))
    cols = np.flatnonzero((alpha >= OPAQUE).any(axis=0))
    if not rows.size:
        return None
    scale = CROP // alpha.shape[0]
    return [int(cols[0]) * scale, int(rows[0]) * scale,
            (int(cols[-1]) + 1) * scale, (int(rows[-1]) + 1) * scale]


def png(rgba: np.ndarray) -> str:
    stream = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8)).save(stream, "PNG")
    return base64.b64encode(stream.getvalue()).decode("ascii")


def postprocess(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    rgba = np.asarray(outputs["thumbnail"]).reshape(outputs["thumbnail"].shape[-3:])
    height, width = rgba.shape[:2]
    return {
        "coverage": float(np.asarray(outputs["coverage"]).reshape(-1)[0]),
        "box": box(rgba[..., 3]),
        "thumbnail": {"width": width, "height": height, "format": "png", "base64": png(rgba)},
    }
