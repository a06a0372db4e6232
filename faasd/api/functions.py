"""Functions as a resource: `/system/functions` (GET, POST, PUT, DELETE), `/system/function/{n}`.

Deploys read a directory on the daemon's own host: `{"path": "/abs/dir", "name": optional}`,
or take the directory as a tar archive (`Content-Type: application/x-tar` or gzip, `?name=`).
POST creates or updates (201 when new, 200 when it replaced a version); PUT only updates.
`GET /system/function/{name}/archive` gives the current version back as an archive (the
cluster's nodes pull deployments with it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.archive import TAR_TYPES, pack, tree_digest
from faasd.catalog import Deployed
from faasd.errors import BadRequest, FaasdError, clip
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.services import Services
from faasd.v2 import tensor_meta

#: What the API shows for an `env` value: names are shown, values (secrets) never.
MASKED = "***"

log = logging.getLogger("faasd.api")


async def list_functions(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response([status(services, v, i) for v, i in services.catalog.list()])


async def get_function(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    version, info = services.catalog.get(request.match_info["name"])
    return json_response(status(services, version, info))


async def deploy(request: web.Request) -> web.Response:
    mode = "update" if request.method == "PUT" else "any"
    services = request.app[SERVICES]
    archive = request.content_type in TAR_TYPES
    source = "an uploaded archive" if archive else "a request"  # the path, once it is known
    try:
        if archive:
            scratch = services.config.state_dir.resolve() / "uploads"
            deployed = await services.catalog.deploy_archive(
                await request.read(), request.query.get("name"), scratch, mode=mode,
                max_unpacked_bytes=services.config.max_unpacked_bytes,
            )
        else:
            doc = await json_object(request)
            path, name = doc.get("path"), doc.get("name") or doc.get("service")
            if not isinstance(path, str) or not path:
                raise BadRequest('deploy needs {"path": "/absolute/dir/on/the/daemon/host"}')
            if name is not None and not isinstance(name, str):
                raise BadRequest("name must be a string")
            source = clip(path)
            deployed = await services.catalog.deploy(Path(path), name, mode=mode)
    except FaasdError as exc:  # the client gets the reason; the operator's log gets it too
        log.warning("deploy of %s rejected: %s", source, exc.message)
        raise
    return _deployed(services, deployed)


async def get_archive(request: web.Request) -> web.Response:
    """The current version's files as a gzip tar archive, with their content digest in
    `X-Faasd-Digest` (what another node of the cluster pulls; admin scope, like /system/*)."""
    services = request.app[SERVICES]
    version, _ = services.catalog.get(request.match_info["name"])
    data, digest = await asyncio.to_thread(
        lambda: (pack(version.directory), tree_digest(version.directory)))
    return web.Response(body=data, content_type="application/gzip",
                        headers={"X-Faasd-Digest": digest,
                                 "X-Faasd-Version": str(version.version)})


def _deployed(services: Services, deployed: Deployed) -> web.Response:
    body = status(services, deployed.version, deployed.info)
    body["replaced_version"] = deployed.replaced
    return json_response(body, status=201 if deployed.created else 200)


async def remove(request: web.Request) -> web.Response:
    name = request.query.get("name")
    if name is None and request.can_read_body:
        doc = await json_object(request)
        name = doc.get("functionName") or doc.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest('remove needs {"functionName": "<name>"} or ?name=<name>')
    removed = await request.app[SERVICES].catalog.remove(name)
    return json_response({"removed": removed.name, "version": removed.version})


async def json_object(request: web.Request) -> dict[str, Any]:
    try:  # orjson: nesting past 1024 levels is a JSONDecodeError (json.loads recursed: 500)
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    return doc


def _in_state_dir(services: Services, directory: Path) -> str:
    """`directory` relative to the state directory: host paths go to the log, not answers."""
    try:
        return str(directory.relative_to(services.config.state_dir.resolve()))
    except ValueError:
        return directory.name


def status(services: Services, version: FunctionVersion, info: ModelInfo) -> dict[str, Any]:
    """One function as the API shows it (OpenFaaS FunctionStatus fields plus ours)."""
    settings = dataclasses.asdict(version.settings)
    settings["env"] = dict.fromkeys(version.settings.env, MASKED)
    warm = services.pool_stats().get("functions", {}).get(version.name, {})
    name = version.name
    problem = services.catalog.problem(name)
    return {
        "name": name,
        "version": version.version,
        "ready": problem is None,
        **({"reason": problem} if problem is not None else {}),
        "directory": _in_state_dir(services, version.directory),
        "deployed_at": version.deployed_at,
        "batched": version.batched,
        "handler": {"preprocess": info.has_preprocess, "postprocess": info.has_postprocess},
        "inputs": [tensor_meta(s) for s in version.inputs],
        "outputs": [tensor_meta(s) for s in version.outputs],
        "settings": settings,
        "replicas": warm.get("alive", 0),
        "availableReplicas": warm.get("idle", 0),
        "invocationCount": services.gateway.calls.get(name, 0),
        "queue_length": services.controller.queue_lengths().get(name, 0),
        # what a warm batch takes beyond its profiled execution (planners reserve it)
        "overhead_ms": round(services.controller.overhead_ms(name), 3),
        "urls": {"invoke": f"/function/{name}", "v2": f"/v2/models/{name}/infer"},
    }
