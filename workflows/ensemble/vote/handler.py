"""vote: the model's TopK (scores, indices) -> {"top5": [{"label", "index", "probability"}]}.

The answer has the shape of the squeezenet and resnet50 examples' answers, labels from
labels.txt next to this file (an index past its end is called "class <index>"). The model
already sorted the five by score (ties: lower index first). No preprocess: the function takes
tensors (two classifiers' probabilities, averaged by the model), alone or in a workflow.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from faasd.handlers import read_labels


@cache
def labels() -> tuple[str, ...]:
    return read_labels(Path(__file__).with_name("labels.txt"))


def top5(scores: np.ndarray, indices: np.ndarray) -> list[dict[str, Any]]:
    names = labels()
    return [
        {"label": names[i] if i < len(names) else f"class {i}", "index": int(i),
         "probability": float(s)}
        for s, i in zip(np.asarray(scores).reshape(-1).tolist(),
                        np.asarray(indices).reshape(-1).tolist(), strict=True)
    ]


def postprocess(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"top5": top5(outputs["scores"], outputs["indices"])}
