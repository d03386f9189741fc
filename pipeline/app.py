"""The application factory: the only place that wires blueprints and the process lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

from quart import Quart, Response, current_app
from werkzeug.exceptions import HTTPException

from . import api, bus, live, ops
from .access import Access
from .asgi import ASGIApp
from .config import Settings
from .hub import Hub, buffer_bytes
from .problems import Problem, problem_response
from .services import EXTENSION_KEY, Services
from .store import Store, prepare_database

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def create_app(settings: Settings) -> Quart:
    """A Quart app serving the pipeline for ``settings`` (its Redis URL must be set)."""
    assert settings.redis_url, "the web process needs a Redis URL"
    app = Quart(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        # Streams set their own (no) timeout; this bounds ordinary responses.
        RESPONSE_TIMEOUT=60,
        BODY_TIMEOUT=30,
    )
    app.register_blueprint(api.blueprint)
    app.register_blueprint(live.blueprint)
    ops.register(app, settings)  # /metrics, /openapi.json, /problems/<kind>
    _register_error_handlers(app)
    # The same checks web.py puts before everything, for whoever serves this app directly.
    app.asgi_app = Access(cast(ASGIApp, app.asgi_app), settings)  # type: ignore[method-assign, assignment]

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        redis = bus.connect(settings.redis_url or "")
        enqueuer = bus.Enqueuer(settings.redis_url or "")
        store = Store(settings.database_url)
        hub = Hub(redis, store, max_buffer_bytes=buffer_bytes(settings.max_body_bytes))
        try:
            await prepare_database(store)
            await hub.start()
            epoch = await store.epoch()
            app.extensions[EXTENSION_KEY] = Services(settings, redis, enqueuer, store, hub, epoch=epoch)
            yield
        finally:
            await hub.stop()
            await store.close()
            await enqueuer.close()
            await redis.aclose(close_connection_pool=True)

    @app.after_request
    async def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app


def close_streams(app: Quart) -> None:
    """End every open stream (WebSocket 1001, SSE end of response): the server is stopping."""
    found: Services | None = app.extensions.get(EXTENSION_KEY)
    if found is not None:
        found.hub.close_all()


def _register_error_handlers(app: Quart) -> None:
    @app.errorhandler(Problem)
    async def on_problem(error: Problem) -> Response:
        return problem_response(error.status, error.detail, error.headers, error.extensions, error.kind)

    @app.errorhandler(HTTPException)
    async def on_http_exception(error: HTTPException) -> Response:
        status = error.code or 500
        headers = {name: value for name, value in error.get_headers() if name.lower() == "allow"}
        return problem_response(status, _http_detail(status, error), headers)

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        logger.exception("unexpected error", exc_info=error)
        return problem_response(500, "Something went wrong on our side; it has been logged.")


def _http_detail(status: int, error: HTTPException) -> str:
    if status == 404:
        return "There is nothing at this URL. See GET / for the page and /messages for the API."
    if status == 405:
        allowed = ", ".join(getattr(error, "valid_methods", None) or [])
        return f"This URL does not accept that method. Allowed: {allowed}."
    if status == 413:
        return f"The body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes (MAX_BODY_BYTES)."
    return error.description or "The request could not be handled."
