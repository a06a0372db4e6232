"""imagepre: a picture -> a fixed-size uint8 tensor; the model makes a classifier's input of it.

preprocess: any picture Pillow reads (PNG, JPEG, ...) of any size -> RGB, shorter side resized
to 256 (bilinear), the centre 256×256 cropped: uint8 [256, 256, 3] as the model's `image`.
Every call gives the same shape, so calls batch together; the model (workflow_graphs.imagepre)
crops the centre 224×224, normalises and puts channels first. Together that is exactly what
faasd.handlers.imagenet_tensor does for the classifiers' own handlers, to within float rounding.

No postprocess: alone, the function answers with its tensor `data_0`; in a workflow the tensor
goes on to the next stage.

A body that is not a picture raises ValueError: a 400 for that call.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from faasd.handlers import decode_image

INPUT = "image"
SIDE = 256


def to_pixels(image: Image.Image) -> np.ndarray:
    """uint8 [SIDE, SIDE, 3]: RGB, shorter side resized to SIDE, centre square cropped."""
    image = image.convert("RGB")
    width, height = image.size
    scale = SIDE / min(width, height)
    size = (max(SIDE, round(width * scale)), max(SIDE, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - SIDE) // 2, (size[1] - SIDE) // 2
    return np.asarray(image.crop((left, top, left + SIDE, top + SIDE)), dtype=np.uint8)


def preprocess(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    return {INPUT: to_pixels(decode_image(body))[np.newaxis]}
