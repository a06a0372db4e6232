"""The one importer of NVML: the real `pynvml`, a fake machine by name, or nothing.

`load(fake)` returns an object with `pynvml`'s names: the fake machine `fake` names (see
`faasd.gpu.fake.MACHINES`), else the `pynvml` module of nvidia-ml-py, else None with the reason
(not installed). The fake is injected here, where faasd would import `pynvml`, so discovery,
accounting and binding run the same code against both. Only the daemon process calls it: NVML
state is per process, and the fork server and sandboxes never touch it.
"""

from __future__ import annotations

import importlib
from typing import Any


class NvmlUnavailable(Exception):
    """No NVML binding can be loaded; the message says what to install."""


def load(fake: str | None = None) -> Any:
    """The NVML binding to use. ValueError for an unknown fake name; NvmlUnavailable when
    nvidia-ml-py is not installed (the fake needs it too: it raises pynvml's own errors)."""
    try:
        module = importlib.import_module("pynvml")
    except ImportError:
        what = f"the fake GPU machine {fake!r}" if fake else "GPU discovery"
        raise NvmlUnavailable(
            f"{what} needs nvidia-ml-py: pip install nvidia-ml-py (or the gpu extra)"
        ) from None
    if fake:
        from faasd.gpu.fake import machine

        return machine(fake)
    return module
