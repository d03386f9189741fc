"""Routes for operators: ``/metrics``, ``/openapi.json`` and the problem types' descriptions."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import orjson
from quart import Blueprint, Quart, Response, current_app

from . import bus, metrics, openapi
from .config import Settings
from .ingest import unavailable
from .problems import PROBLEM_TYPES, Problem, problem_type_uri

blueprint = Blueprint("ops", __name__)
_REPORTER_KEY = "pipeline.metrics"


def register(app: Quart, settings: Settings) -> None:
    """Serve the operator routes and report this process's metrics while the app serves."""
    app.register_blueprint(blueprint)

    @app.while_serving
    async def report_metrics() -> AsyncGenerator[None, None]:
        redis = bus.connect(settings.redis_url or "")
        reporter = metrics.start_reporter(redis, "web", settings.metrics_enabled)
        app.extensions[_REPORTER_KEY] = (reporter, settings)
        try:
            yield
        finally:
            await reporter.stop()
            await redis.aclose(close_connection_pool=True)


def retention(settings: Settings) -> dict[str, object]:
    """The retention in force, as /healthz reports it (None: keep everything)."""
    return {"max_messages": settings.retention_max_messages, "max_age_s": settings.retention_max_age_s}


@blueprint.get("/metrics")
async def metrics_route() -> Response:
    """The whole pipeline's metrics in Prometheus text format (see ``metrics``)."""
    reporter, settings = current_app.extensions[_REPORTER_KEY]
    if not settings.metrics_enabled:
        raise Problem(404, "Metrics are turned off (METRICS=0).")
    # READ (SPEC §8): /metrics is a read. With READ_TOKEN set it needs a token or a session,
    # checked before any route by pipeline/access.py (a route not listed as open is private).
    try:
        body = await metrics.exposition(reporter.redis, reporter)
    except bus.REDIS_ERRORS:
        raise unavailable("Redis (where the metrics are gathered)") from None
    return Response(body, content_type=metrics.CONTENT_TYPE)


@blueprint.get("/openapi.json")
async def openapi_route() -> Response:
    """The OpenAPI 3.1 description of every HTTP route."""
    return Response(openapi.document_bytes(), content_type="application/json")


@blueprint.get("/problems/<kind>")
async def problem_type(kind: str) -> Response:
    """What a problem ``type`` means (the URI a problem document names)."""
    if kind not in PROBLEM_TYPES:
        raise Problem(404, f"There is no problem type {kind!r}.")
    title, description = PROBLEM_TYPES[kind]
    document = {"type": problem_type_uri(kind), "title": title, "description": description}
    return Response(orjson.dumps(document), content_type="application/json")
