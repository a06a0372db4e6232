"""Helpers for function handlers (`handler.py`), importable inside every sandbox.

A handler's `preprocess` raises ValueError for input it cannot read: the sandbox turns that
into a 400 for that call only. These helpers follow the same rule.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

#: ImageNet's per-channel mean and standard deviation (RGB, 0..1).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def decode_image(body: bytes, what: str = "a PNG or JPEG picture") -> Image.Image:
    """The picture in `body`, fully loaded, in its own mode; ValueError if there is none."""
    if not body:
        raise ValueError(f"empty body: send {what}")
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except UnidentifiedImageError:
        raise ValueError(
            "cannot read the body as a picture (PNG or JPEG expected): unknown format"
        ) from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated, corrupt
        raise ValueError(f"cannot read the body as a picture: {exc}") from exc
    return image


def imagenet_tensor(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """float32 [3, crop, crop]: shorter side resized to `resize`, centre-cropped, normalized
    with ImageNet's mean and standard deviation, channels first (the torchvision recipe)."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def read_labels(path: Path) -> tuple[str, ...]:
    """One label a line; no file means no labels."""
    if not path.exists():
        return ()
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def top_k(scores: np.ndarray, labels: tuple[str, ...], k: int = 5) -> list[dict[str, Any]]:
    """The k best classes as {"label", "index", "probability"}; ties keep the lower index first."""
    probabilities = np.asarray(scores, dtype=np.float64).reshape(-1)
    best = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {
            "label": labels[i] if i < len(labels) else f"class {i}",
            "index": int(i),
            "probability": float(probabilities[i]),
        }
        for i in best
    ]
