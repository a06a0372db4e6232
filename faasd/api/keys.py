"""Typed keys of what the HTTP app holds."""

from __future__ import annotations

from aiohttp import web

from faasd.services import Services

SERVICES = web.AppKey("services", Services)
