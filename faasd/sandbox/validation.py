"""Deploy-time verdicts from loading a function in a sandbox, as DeployErrors naming the file.

Pure: takes the version and what the sandbox reported, returns the error to raise.
"""

from __future__ import annotations

from pathlib import Path

from faasd.errors import DeployError
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.sandbox import protocol


def relative_name(version: FunctionVersion, path: Path) -> str:
    """`path` as the user knows it: relative to the function directory."""
    try:
        return str(path.relative_to(version.directory))
    except ValueError:
        return path.name


def deploy_error(
    version: FunctionVersion,
    kind: str,
    message: str,
    out_of_memory: bool = False,
    stage: str | None = None,
) -> DeployError:
    """The DeployError for a sandbox that could not load `version`.

    `kind` is protocol.FAILED_MODEL or FAILED_HANDLER (the worker said why), "died" (it exited
    while loading) or "timeout". `stage` is what the worker last said it was loading
    (protocol.STAGE_*): a hang while importing handler.py is blamed on handler.py.
    """
    model = relative_name(version, version.model_path)
    if (kind == "timeout" and stage == protocol.STAGE_HANDLER
            and version.handler_path is not None):
        handler = relative_name(version, version.handler_path)
        return DeployError(
            f"importing {handler} took too long in the sandbox: {message}; move slow work "
            "out of the module's top level (or raise deploy_timeout_s in the daemon's config)",
            file=handler,
        )
    if kind == protocol.FAILED_HANDLER and version.handler_path is not None:
        handler = relative_name(version, version.handler_path)
        return DeployError(
            f"{handler} failed to import in the sandbox: {message}; fix the handler "
            "(its imports must be installed in faasd's environment)",
            file=handler,
        )
    if kind == protocol.FAILED_MODEL:
        return DeployError(
            f"{model} cannot be loaded by onnxruntime: {message}; export the model again "
            "(e.g. torch.onnx.export) and check the file was copied whole",
            file=model,
        )
    if out_of_memory:
        return DeployError(
            f"loading {model} ran out of memory (limit {version.settings.memory_mb} MB); "
            "raise resources.memory_mb in faasd.yaml",
            file=model,
        )
    if kind == "timeout":
        return DeployError(f"loading {model} took too long in the sandbox: {message}",
                           file=model)
    return DeployError(
        f"the sandbox loading {model} {message}; the model or its handler crashed the process",
        file=model,
    )


def _batch_setting_file(version: FunctionVersion) -> str:
    """Which file set max_batch_size: faasd.yaml or config.pbtxt, whichever mentions it (the
    yaml first); faasd.yaml when neither does, as that is where the fix goes."""
    for name, key in (("faasd.yaml", "max_batch_size"), ("config.pbtxt", "max_batch_size")):
        try:
            if key in (version.directory / name).read_text():
                return name
        except OSError:
            continue
    return "faasd.yaml"


def oversized_batch(version: FunctionVersion, info: ModelInfo) -> DeployError | None:
    """An error if batching is asked for but some input's first dimension is fixed."""
    batch = version.settings.max_batch_size
    if batch <= 1 or info.batched:
        return None
    fixed = next((s for s in info.inputs if not s.shape or s.shape[0] != -1), None)
    detail = (
        f"input {fixed.name!r} has shape {list(fixed.shape)}"
        if fixed is not None
        else "it has no inputs"
    )
    where = _batch_setting_file(version)
    return DeployError(
        f"max_batch_size is {batch} but {relative_name(version, version.model_path)} cannot take "
        f"a batch: {detail} (first dimension fixed). Set max_batch_size to 1 in {where}, or export "
        "the model with a dynamic first dimension",
        file=where,
    )
