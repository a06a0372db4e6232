"""The HTTP API on one port: OpenFaaS-style and Open Inference Protocol paths side by side.

`create_app(config, services)` wires thin handlers (one module per resource) to the services;
the daemon owns the services' lifecycle. Every error is JSON (see `errors.py`).
"""

from __future__ import annotations

from aiohttp import web

from faasd.api import (
    cluster_calls,
    functions,
    health,
    invocations,
    invoke,
    metrics,
    nodes,
    profiles,
    tokens,
    v2,
    workflows,
)
from faasd.api.browsers import BROWSERS, BrowserPolicy, browser_guard
from faasd.api.connections import track_requests
from faasd.api.errors import json_errors
from faasd.api.keys import SERVICES
from faasd.auth.middleware import ACCESS, Access, require_token
from faasd.auth.store import TokenCache
from faasd.auth.tokens import AccessRules, cluster_record
from faasd.config import DaemonConfig
from faasd.services import Services

__all__ = ["SERVICES", "create_app"]


def create_app(config: DaemonConfig, services: Services) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        # the token first: a caller without one learns that, whatever else is wrong
        middlewares=[track_requests, require_token, browser_guard, json_errors,
                     invocations.idempotent_calls],
    )
    app[SERVICES] = services
    app[BROWSERS] = BrowserPolicy.for_bind(config.host, config.allowed_hosts,
                                           config.allowed_origins)
    token = services.replicator.token if services.replicator is not None else None
    cluster = cluster_record(token) if token is not None else None
    app[ACCESS] = Access(TokenCache(config.state_dir.resolve()),
                         AccessRules(config.metrics_access), services.clock.wall,
                         extra={cluster.digest: cluster} if cluster is not None else {})
    add = app.router.add_route
    add("POST", "/function/{name}", invoke.function_call)
    add("POST", "/async-function/{name}", invocations.async_function)
    add("POST", "/async-workflow/{name}", invocations.async_workflow)
    add("GET", "/system/invocations", invocations.list_invocations)
    add("GET", "/system/invocations/{id}", invocations.get_invocation)
    add("GET", "/system/invocations/{id}/result", invocations.get_result)
    add("GET", "/system/tokens", tokens.list_tokens)
    add("POST", "/system/tokens", tokens.create_token)
    add("DELETE", "/system/tokens/{token}", tokens.revoke_token)
    add("GET", "/system/functions", functions.list_functions)
    add("POST", "/system/functions", functions.deploy)
    add("PUT", "/system/functions", functions.deploy)
    add("DELETE", "/system/functions", functions.remove)
    add("GET", "/system/function/{name}", functions.get_function)
    add("GET", "/system/function/{name}/archive", functions.get_archive)
    add("POST", "/workflow/{name}", workflows.workflow_call)
    add("GET", "/system/workflows", workflows.list_workflows)
    add("POST", "/system/workflows", workflows.deploy)
    add("PUT", "/system/workflows", workflows.deploy)
    add("DELETE", "/system/workflows", workflows.remove)
    add("GET", "/system/workflow/{name}", workflows.get_workflow)
    add("GET", "/system/workflow/{name}/plan", workflows.plan)
    add("POST", "/system/profile/{name}", profiles.run_profile)
    add("GET", "/system/profile/{name}", profiles.get_profile)
    add("GET", "/system/nodes", nodes.list_nodes)
    add("PUT", "/system/nodes/{name}/state", nodes.put_state)
    add("POST", "/system/cluster/jobs", cluster_calls.take_jobs)
    add("POST", "/system/cluster/assign", cluster_calls.assign)
    add("POST", "/system/cluster/run", cluster_calls.run)
    add("POST", "/system/cluster/outputs", cluster_calls.outputs)
    add("GET", "/healthz", health.healthz)
    add("GET", "/metrics", metrics.metrics)
    add("GET", "/v2", v2.server_metadata)
    add("GET", "/v2/health/live", v2.live)
    add("GET", "/v2/health/ready", v2.ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        # infer first: the router tries a prefix's routes in this order, and infer is the hot one
        add("POST", prefix + "/infer", invoke.v2_infer)
        add("GET", prefix, v2.model_metadata)
        add("GET", prefix + "/ready", v2.model_ready)
        add("GET", prefix + "/config", v2.model_config)
    return app
