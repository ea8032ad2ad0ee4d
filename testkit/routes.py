"""The route table of the HTTP app as requests see it, for tests that walk every route.

FastAPI (0.165) keeps included routers nested in ``app.routes``; ``iter_route_contexts``
walks into them and answers each route with the dependencies of its ``include_router``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from viewer_api.app import PUBLIC_ROUTERS


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every API route of ``app`` (the context's ``dependant`` includes the dependencies its
    router was included with); fails when none is found."""
    routes = [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]
    assert routes, "the route table is empty: the app's routes were not found"
    return routes


def is_public(context: RouteContext) -> bool:
    """Whether the route belongs to one of ``viewer_api.app.PUBLIC_ROUTERS``."""
    return any(context.original_route in router.routes for router in PUBLIC_ROUTERS)


def protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route of ``app`` but the public ones."""
    found = []
    for context in api_routes(app):
        route = context.original_route
        if isinstance(route, APIRoute) and not is_public(context):
            found += [(method, route.path) for method in sorted(route.methods)]
    return found
