"""An ImageNet-style classifier's handler: a picture -> the top-5 classes.

preprocess: any picture Pillow reads (PNG, JPEG, ...) of any size -> RGB, shorter side resized
to 256, the centre 224×224 cropped, scaled to 0..1 and normalized with ImageNet's mean and
standard deviation, channels first: float32 [1, 3, 224, 224] as the model's `data_0`.
postprocess: the model's class probabilities -> {"top5": [{"label", "index", "probability"}]},
labels from labels.txt next to this file (ties keep the lower index first).

A body that is not a picture raises ValueError: a 400 for that call.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faasd.handlers import decode_image, imagenet_tensor, read_labels, top_k

INPUT = "data_0"


def to_tensor(image: Image.Image) -> np.ndarray:
    """float32 [3, 224, 224]: resized, centre-cropped, normalized, channels first."""
    return imagenet_tensor(image)


@cache
def labels() -> tuple[str, ...]:
    return read_labels(Path(__file__).with_name("labels.txt"))


def preprocess(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    return {INPUT: to_tensor(decode_image(body))[np.newaxis]}


def postprocess(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    (scores,) = outputs.values()
    return {"top5": top_k(scores, labels(), 5)}
