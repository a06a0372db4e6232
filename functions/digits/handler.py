"""digits: a picture of one handwritten digit -> {"label": d, "probabilities": [10 floats]}.

preprocess turns a PNG or JPEG of any size into what the model was trained on: scikit-learn's
`load_digits` pictures, 8×8 pixels of 0 (paper) to 16 (ink). Those were made by cutting a
normalized 32×32 bitmap, whose digit fills the full height, into 4×4 blocks and counting the
ink in each. So: grayscale, invert (dark ink on light paper; a light digit on a dark
background is recognised and kept as is), subtract the paper's level, crop to the ink's
bounding box, pad to a square around it, average down to 8×8, and scale so the darkest block
is 16. build_models.py trains the model on the training pictures passed through this same
function too, so the model has seen what it produces.

A body that is not a picture, or a blank picture, raises ValueError: a 400 for that call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from faasd.handlers import decode_image

INPUT = "input"
OUTPUT = "probabilities"
SIDE = 8
MAX_INTENSITY = 16.0
#: A pixel is ink when it is at least this fraction as dark as the darkest one (for the crop).
INK_FRACTION = 0.1
#: Below this contrast (of 255) between ink and paper, the picture is taken to be blank.
MIN_CONTRAST = 24.0


def _gray(image: Image.Image) -> np.ndarray:
    """Grayscale 0..255 as float32, transparent areas taken as white paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def to_dataset_pixels(image: Image.Image) -> np.ndarray:
    """`image` as a `load_digits` sample: float32 [64], 0 (paper) .. 16 (ink)."""
    gray = _gray(image)
    ink = 255.0 - gray if np.median(gray) >= 128 else gray
    ink = np.clip(ink - np.median(ink), 0.0, None)
    if ink.max() < MIN_CONTRAST:
        raise ValueError("no digit found: the picture is blank or has too little contrast")
    rows = np.flatnonzero((ink >= INK_FRACTION * ink.max()).any(axis=1))
    cols = np.flatnonzero((ink >= INK_FRACTION * ink.max()).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = crop
    small = Image.fromarray(square).resize((SIDE, SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32).reshape(SIDE * SIDE)
    return pixels * (MAX_INTENSITY / max(float(pixels.max()), 1e-6))


def preprocess(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    image = decode_image(body, "a PNG or JPEG picture of one digit")
    return {INPUT: to_dataset_pixels(image)[np.newaxis, :]}


def postprocess(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    probabilities = np.asarray(outputs[OUTPUT], dtype=np.float64).reshape(-1)
    return {"label": int(np.argmax(probabilities)), "probabilities": probabilities.tolist()}
