"""Open Inference Protocol (V2) metadata and health, as `tritonclient.http` expects them.

Inference itself is in `invoke.py`. Health answers 200 with a JSON body (tritonclient only looks
at the status); a model that is not deployed is a JSON 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.config import faasd_version
from faasd.errors import NotFound, Unavailable
from faasd.functions.spec import FunctionVersion
from faasd.v2 import tensor_meta

EXTENSIONS = ["binary_tensor_data", "model_configuration"]
PLATFORM = "onnxruntime_onnx"


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(
        {"name": "faasd", "version": faasd_version(), "extensions": EXTENSIONS}
    )


async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    """200 once the startup functions are loaded, until shutdown begins; else 503."""
    services = request.app[SERVICES]
    if not services.controller.accepting:
        raise Unavailable("faasd is shutting down", retry_after_s=5)
    if not services.readiness.ready:
        raise Unavailable(services.readiness.detail, retry_after_s=1)
    problems = services.catalog.problems()
    if problems:  # as Triton's strict readiness: every deployed model must be servable
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        raise Unavailable(f"function(s) not ready: {listed}", retry_after_s=60)
    return json_response({"ready": True})


def _version(request: web.Request) -> FunctionVersion:
    name = request.match_info["name"]
    version, _ = request.app[SERVICES].catalog.get(name)
    wanted = request.match_info.get("version")
    if wanted is not None and wanted != str(version.version):
        raise NotFound(f"{name!r} serves version {version.version} only, not {wanted}")
    return version


def _ensemble(request: web.Request) -> dict[str, Any] | None:
    """The V2 view of the workflow named in the path, if no function has that name: a Triton
    ensemble whose inputs are its source's and whose outputs are its sinks' (named
    `<function>.<output>` when there are several sinks)."""
    services = request.app[SERVICES]
    name = request.match_info["name"]
    if services.catalog.ready(name):
        return None
    workflow = services.workflows.find(name)
    if workflow is None:
        return None
    wanted = request.match_info.get("version")
    if wanted is not None and wanted != str(workflow.version):
        raise NotFound(f"{name!r} serves version {workflow.version} only, not {wanted}")
    spec = workflow.spec
    sinks = spec.sinks()
    source, _ = services.catalog.get(spec.source)
    outputs = []
    for sink in sinks:
        version, _ = services.catalog.get(sink)
        for out in version.outputs:
            meta = tensor_meta(out)
            if len(sinks) > 1:
                meta["name"] = f"{sink}.{out.name}"
            outputs.append(meta)
    steps = [
        {
            "model_name": f,
            "model_version": -1,
            "input_map": {feed.input: f"{feed.source}.{feed.output}"
                          for feed in workflow.wiring.get(f, ())},
        }
        for f in spec.functions
    ]
    return {
        "name": name,
        "versions": [str(workflow.version)],
        "platform": "ensemble",
        "inputs": [tensor_meta(s) for s in source.inputs],
        "outputs": outputs,
        "ensemble_scheduling": {"step": steps},
    }


async def model_metadata(request: web.Request) -> web.Response:
    ensemble = _ensemble(request)
    if ensemble is not None:
        return json_response(
            {k: ensemble[k] for k in ("name", "versions", "platform", "inputs", "outputs")}
        )
    version = _version(request)
    return json_response(
        {
            "name": version.name,
            "versions": [str(version.version)],
            "platform": PLATFORM,
            "inputs": [tensor_meta(s) for s in version.inputs],
            "outputs": [tensor_meta(s) for s in version.outputs],
        }
    )


async def model_ready(request: web.Request) -> web.Response:
    ensemble = _ensemble(request)
    if ensemble is not None:
        return json_response({"name": ensemble["name"], "ready": True})
    version = _version(request)
    problem = request.app[SERVICES].catalog.problem(version.name)
    if problem is not None:
        raise Unavailable(f"{version.name} is not ready: {problem}", retry_after_s=60)
    return json_response({"name": version.name, "ready": True})


async def model_config(request: web.Request) -> web.Response:
    """The effective configuration in Triton's field names (max_batch_size 0 = no batching)."""
    ensemble = _ensemble(request)
    if ensemble is not None:
        return json_response({
            "name": ensemble["name"],
            "platform": "ensemble",
            "max_batch_size": 0,
            "input": [_config_tensor(t) for t in ensemble["inputs"]],
            "output": [_config_tensor(t) for t in ensemble["outputs"]],
            "ensemble_scheduling": ensemble["ensemble_scheduling"],
        })
    version = _version(request)
    settings = version.settings
    batching = version.batched and settings.max_batch_size > 1

    def dims(shape: tuple[int, ...]) -> list[int]:
        return list(shape[1:] if version.batched else shape)

    config: dict[str, Any] = {
        "name": version.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size if batching else 0,
        "input": [
            {"name": s.name, "data_type": f"TYPE_{_type(s.datatype)}", "dims": dims(s.shape)}
            for s in version.inputs
        ],
        "output": [
            {"name": s.name, "data_type": f"TYPE_{_type(s.datatype)}", "dims": dims(s.shape)}
            for s in version.outputs
        ],
        "instance_group": [{"count": settings.max_instances, "kind": "KIND_CPU"}],
    }
    if batching:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(settings.max_queue_delay_ms * 1000)
        }
    return json_response(config)


def _config_tensor(meta: dict[str, Any]) -> dict[str, Any]:
    return {"name": meta["name"], "data_type": f"TYPE_{_type(meta['datatype'])}",
            "dims": meta["shape"]}


def _type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype
