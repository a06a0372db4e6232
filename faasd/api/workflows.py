"""Workflows: `POST /workflow/{name}`, `/system/workflows` (GET, POST, PUT, DELETE) and
`/system/workflow/{name}`; the V2 model paths serve a workflow as an ensemble (`invoke.py`,
`v2.py` fall back here when no function has the name).

A workflow call takes every body form its source function takes; the answer is its sink's, in
the form the caller used, or with several sinks a JSON object keyed by function name. Every
answer carries `X-Call-Id`, `X-Duration-Seconds`, `X-Faasd-Slo-Ms` and `X-Faasd-Slo-Met`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from esg.pricing import DEFAULT_PRICING, parse_pricing
from esg.profiles import Capacity
from faasd.api.errors import render_error
from faasd.api.functions import json_object
from faasd.api.invoke import parse, read_body, render
from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.controller import limits_of
from faasd.errors import BadRequest, FaasdError
from faasd.functions.spec import FunctionVersion
from faasd.gateway import CallResult, Payload
from faasd.sandbox.items import BodyResult, TensorResult
from faasd.services import Services
from faasd.v2 import encode_plain, tensor_meta
from faasd.workflows.plan import explain
from faasd.workflows.runner import DeployedWorkflow, WorkflowResult


async def workflow_call(request: web.Request) -> web.StreamResponse:
    return await call(request, request.match_info["name"], v2_only=False)


async def call(request: web.Request, name: str, v2_only: bool) -> web.StreamResponse:
    services = request.app[SERVICES]
    start_s = services.clock.now()
    workflow = services.workflows.get(name)
    version, info = services.catalog.get(workflow.spec.source)
    body = await read_body(request, services.config.max_body_bytes)
    payload = await parse(request, version, info, body, v2_only)
    return await answer(services, workflow, version, payload, os.urandom(16).hex(), start_s)


async def answer(
    services: Services,
    workflow: DeployedWorkflow,
    source_version: FunctionVersion,
    payload: Payload,
    call_id: str,
    start_s: float,
    on_dispatch: Callable[[], None] | None = None,
) -> web.Response:
    """Run one workflow call and render its answer, or its failure as a JSON error, with the
    workflow's headers; counted in the workflow metrics. The synchronous handler and an
    asynchronous call's run (`faasd.api.invocations`) both answer through here. `start_s`
    (monotonic seconds) is where the call's SLO starts; `on_dispatch`: see `Invocation`."""
    name = workflow.spec.name
    headers = {"X-Call-Id": call_id, "X-Faasd-Slo-Ms": f"{workflow.spec.slo_ms:g}"}
    try:
        result = await services.runner.run(
            workflow, source_version, payload.item, call_id=call_id, start_s=start_s,
            postprocess=payload.postprocess, on_dispatch=on_dispatch,
        )
    except FaasdError as exc:
        elapsed_s = services.clock.now() - start_s
        services.metrics.workflow_finished(name, False, elapsed_s)
        headers["X-Duration-Seconds"] = f"{elapsed_s:.6f}"
        headers["X-Faasd-Slo-Met"] = "false"
        return render_error(exc, headers)
    elapsed_s = services.clock.now() - start_s
    met = elapsed_s * 1000.0 <= workflow.spec.slo_ms
    services.metrics.workflow_finished(name, met, elapsed_s)
    for function, stage in result.stages.items():
        services.metrics.stage_finished(name, function, stage.queue_s, stage.exec_s)
    headers["X-Duration-Seconds"] = f"{elapsed_s:.6f}"
    headers["X-Faasd-Slo-Met"] = "true" if met else "false"
    headers["X-Faasd-Cold-Start"] = "true" if result.cold_start else "false"
    headers["X-Faasd-Cost"] = f"{result.cost(DEFAULT_PRICING):.6g}"
    response = _render(workflow, payload, result, headers)
    services.controller.observe_outside(name, result.outside_s(workflow.spec, services.clock.now()))
    services.controller.observe_before(name, result.before_s(workflow.spec, start_s))
    return response


def _render(
    workflow: DeployedWorkflow, payload: Payload, result: WorkflowResult, headers: dict[str, str]
) -> web.Response:
    spec = workflow.spec
    if len(result.sinks) == 1:
        (answer,) = result.sinks.values()
        return render(spec.name, str(workflow.version), payload, answer, headers)
    if payload.form == "v2" and payload.request is not None:  # an ensemble's outputs
        tensors = {
            f"{function}.{name}": array
            for function, answer in result.sinks.items()
            for name, array in _tensors(answer).items()
        }
        merged = CallResult(TensorResult(tensors), False, 0.0, 0.0, 1)
        return render(spec.name, str(workflow.version), payload, merged, headers)
    doc = {function: _as_json(answer) for function, answer in result.sinks.items()}
    headers["Content-Type"] = "application/json"
    return web.Response(body=orjson.dumps(doc), headers=headers)


def _tensors(answer: CallResult) -> dict[str, Any]:
    if not isinstance(answer.result, TensorResult):
        raise TypeError(f"unexpected result {type(answer.result).__name__}")
    return answer.result.tensors


def _as_json(answer: CallResult) -> Any:
    result = answer.result
    if isinstance(result, BodyResult):
        if "json" in result.content_type:
            return json.loads(result.body)
        return result.body.decode("utf-8", errors="replace")
    return json.loads(encode_plain(_tensors(answer)))


# ---------------------------------------------------------------- /system/workflows


async def list_workflows(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response([status(services, w) for w in services.workflows.list()])


async def get_workflow(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response(status(services, services.workflows.get(request.match_info["name"])))


async def deploy(request: web.Request) -> web.Response:
    mode = "update" if request.method == "PUT" else "any"
    services = request.app[SERVICES]
    doc = await json_object(request)
    path, name = doc.get("path"), doc.get("name")
    if not isinstance(path, str) or not path:
        raise BadRequest('deploy needs {"path": "/absolute/workflow/dir/on/the/daemon/host"}')
    if name is not None and not isinstance(name, str):
        raise BadRequest("name must be a string")
    workflow, replaced = await services.workflows.deploy(Path(path), name, mode=mode)
    body = status(services, workflow)
    body["replaced_version"] = replaced
    return json_response(body, status=201 if replaced is None else 200)


async def remove(request: web.Request) -> web.Response:
    name = request.query.get("name")
    if name is None and request.can_read_body:
        doc = await json_object(request)
        name = doc.get("workflowName") or doc.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest('remove needs {"name": "<workflow>"} or ?name=<workflow>')
    removed = await request.app[SERVICES].workflows.remove(name)
    return json_response({"removed": removed.spec.name, "version": removed.version})


async def plan(request: web.Request) -> web.Response:
    """What ESG would do with the workflow on this node, given the live profiles."""
    services = request.app[SERVICES]
    workflow = services.workflows.get(request.match_info["name"])
    snapshot = services.controller.snapshot()
    max_batch = {
        f: limits_of(services.catalog.get(f)[0]).max_batch for f in workflow.spec.functions
    }
    doc = explain(workflow.spec.to_esg(), snapshot.profiles, max_batch, parse_pricing(None),
                  Capacity.of(snapshot.nodes))
    doc["scheduler"] = services.config.scheduler
    return json_response(doc)


def status(services: Services, workflow: DeployedWorkflow) -> dict[str, Any]:
    """One workflow as the API shows it: its DAG, SLO, feeds and its functions' state."""
    spec = workflow.spec
    doc = spec.to_json()
    functions: dict[str, dict[str, Any]] = {}
    ready = True
    for function in spec.functions:
        try:
            version, info = services.catalog.get(function)
        except FaasdError:
            ready = False
            functions[function] = {"deployed": False}
            continue
        functions[function] = {
            "version": version.version,
            "inputs": [tensor_meta(s) for s in info.inputs],
            "outputs": [tensor_meta(s) for s in info.outputs],
            "feeds": [
                {"input": f.input, "from": f.source, "output": f.output}
                for f in workflow.wiring.get(function, ())
            ],
        }
    doc.update({
        "version": workflow.version,
        "deployed_at": workflow.deployed_at,
        "ready": ready,
        "source": spec.source,
        "sinks": list(spec.sinks()),
        "function_status": functions,
        "scheduler": services.config.scheduler,
        # what a call spends outside its stages (hops and the answer), smoothed: the
        # planners leave it over from the SLO
        "outside_ms": round(services.controller.outside_ms(spec.name), 3),
        # what it spends before its source stage is submitted (the body read and parsed),
        # smoothed: the planners see it as time gone from the call's deadline
        "before_ms": round(services.controller.before_ms(spec.name), 3),
        "urls": {"invoke": f"/workflow/{spec.name}", "v2": f"/v2/models/{spec.name}/infer"},
    })
    return doc
