"""An ImageNet-style classifier's handler: a picture -> the top-5 classes.

preprocess: any picture Pillow reads (PNG, JPEG, ...) of any size -> RGB, shorter side resized
to 256, the centre 224×224 cropped, scaled to 0..1 and normalized with ImageNet's mean and
standard deviation, channels first: float32 [1, 3, 224, 224] as the model's `data_0`.
postprocess: the model's class probabilities -> {"top5": [{"label", "index", "probability"}]},
labels from labels.txt next to this file (ties keep the lower index first).

A body that is not a picture raises ValueError: a 400 for that call.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

INPUT = "data_0"
RESIZE = 256
CROP = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
TOP = 5


def decode(body: bytes) -> Image.Image:
    """The picture in `body` as RGB; ValueError if there is none."""
    if not body:
        raise ValueError("empty body: send a PNG or JPEG picture")
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except UnidentifiedImageError:
        raise ValueError(
            "cannot read the body as a picture (PNG or JPEG expected): unknown format"
        ) from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated, corrupt
        raise ValueError(f"cannot read the body as a picture: {exc}") from exc
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> np.ndarray:
    """float32 [3, 224, 224]: resized, centre-cropped, normalized, channels first."""
    width, height = image.size
    scale = RESIZE / min(width, height)
    size = (max(CROP, round(width * scale)), max(CROP, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((pixels - MEAN) / STD).transpose(2, 0, 1))


@cache
def labels() -> tuple[str, ...]:
    path = Path(__file__).with_name("labels.txt")
    if not path.exists():
        return ()
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def preprocess(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    return {INPUT: to_tensor(decode(body))[np.newaxis]}


def postprocess(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    (scores,) = outputs.values()
    probabilities = np.asarray(scores, dtype=np.float64).reshape(-1)
    best = np.argsort(-probabilities, kind="stable")[:TOP]
    names = labels()
    return {
        "top5": [
            {
                "label": names[i] if i < len(names) else f"class {i}",
                "index": int(i),
                "probability": float(probabilities[i]),
            }
            for i in best
        ]
    }
