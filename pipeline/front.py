"""The ASGI layer in front of Quart, and the one table of which request goes where.

:data:`ROUTES` lists the requests served here, at the ASGI level: ingest and WebSocket streams,
which run thousands of times a second and for which Quart's per-request and per-message work
(request and context objects, routing, hooks, re-encoding each frame per connection) cost more
than the work itself. Every other request (reads, health, SSE, the page, and any other method on
these paths) goes to Quart: ``api.py`` and ``live.py``. There is no second copy of either hot
path; ``ingest.serve_ingest`` and ``live.serve_websocket`` are the implementation.

Quart's URL map is told about these routes (without a view), so its 405 answers on them list
every method the path takes in ``Allow``, and ``OPTIONS`` does too.

An unexpected exception in a handler here is logged once, with its traceback, and answered as
Quart's own errors are: problem+json 500 (or, on a WebSocket, close code 1011).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from quart import Quart

from .asgi import ASGIApp, Receive, Scope, Send
from .ingest import CHANNEL_INGEST_PATH, serve_ingest
from .live import CLOSE_TRY_AGAIN_LATER, EVENTS_PATHS, guard_events, serve_websocket
from .problems import problem_document
from .services import EXTENSION_KEY, Services

logger = logging.getLogger(__name__)

Handler = Callable[[Services, Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """Requests of one ASGI scope type, with one of ``methods``, on one of ``paths``.

    A path may hold one ``<name>`` segment: it matches any one non-empty segment there (the
    handler reads it from the path and checks it).
    """

    scope: str  # "http" or "websocket" (a WebSocket handshake is a GET)
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    handler: Handler


# fmt: off
ROUTES: tuple[Route, ...] = (
    #     scope        methods          paths                                         handler
    Route("http",      ("POST", "PUT"), ("/messages", "/json_dummy", "/json_dummy/"), serve_ingest),
    Route("http",      ("POST", "PUT"), (CHANNEL_INGEST_PATH,),                       serve_ingest),
    Route("websocket", ("GET",),        ("/ws", "/json_dummy_ws"),                    serve_websocket),
)
# fmt: on

_UNEXPECTED = "Something went wrong on our side; it has been logged."
_NOT_SERVING = "The service is starting or stopping; try again shortly."
_CLOSE_INTERNAL_ERROR = 1011  # RFC 6455 §7.4.1


class Front:
    """Serves :data:`ROUTES` (or ``routes``) directly and passes every other request to ``app``."""

    def __init__(self, app: Quart, routes: tuple[Route, ...] = ROUTES) -> None:
        self.app = cast(ASGIApp, app)
        self._extensions: Mapping[str, Any] = app.extensions  # holds Services while serving
        self._handlers: dict[tuple[str, str, str], Handler] = {
            (route.scope, method, path): route.handler
            for route in routes
            for method in route.methods
            for path in route.paths
            if "<" not in path
        }
        # (scope type, method, text before <name>, text after it, handler)
        self._templates: list[tuple[str, str, str, str, Handler]] = [
            (route.scope, method, *_split_template(path), route.handler)
            for route in routes
            for method in route.methods
            for path in route.paths
            if "<" in path
        ]
        for route in routes:
            for path in route.paths:
                # Never dispatched by Quart (there is no view): it answers 405/OPTIONS right.
                app.add_url_rule(
                    path,
                    endpoint=f"front:{route.scope}:{path}",
                    methods=route.methods,
                    websocket=route.scope == "websocket",
                )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, method, path = scope["type"], scope.get("method", "GET"), scope.get("path", "")
        handler = self._handlers.get((kind, method, path)) or self._template_handler(kind, method, path)
        if handler is None:
            if scope["type"] == "http" and scope.get("path") in EVENTS_PATHS:
                send = guard_events(scope, send)  # SSE: its socket's backlog counted, writes bounded
            await self.app(scope, receive, send)
            return
        found: Services | None = self._extensions.get(EXTENSION_KEY)
        if found is None:
            await _refuse(scope, send, 503, _NOT_SERVING)
            return
        try:
            # ``send`` is passed on as it is: the WebSocket raw-frame writer needs hypercorn's own.
            await handler(found, scope, receive, send)
        except Exception:
            logger.exception(
                "unexpected error serving %s %s", scope.get("method", "WebSocket"), scope["path"]
            )
            await _refuse(scope, send, 500, _UNEXPECTED)

    def _template_handler(self, kind: str, method: str, path: str) -> Handler | None:
        for scope_type, template_method, before, after, handler in self._templates:
            if (kind, method) == (scope_type, template_method) and path.startswith(before):
                # One non-empty segment: an encoded "/" arrives decoded and matches nothing (404).
                segment = path[len(before) : len(path) - len(after)] if path.endswith(after) else ""
                if len(path) > len(before) + len(after) and segment and "/" not in segment:
                    return handler
        return None


def _split_template(path: str) -> tuple[str, str]:
    before, _, rest = path.partition("<")
    return before, rest.partition(">")[2]


async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    """Answer ``status`` as a problem, or close a WebSocket, as far as the connection still allows:
    once a response has begun (or the client has gone) the server refuses another, and that is
    the end of it."""
    with contextlib.suppress(Exception):
        if scope["type"] == "http":
            await _send_problem(send, status, detail)
        else:
            code = CLOSE_TRY_AGAIN_LATER if status == 503 else _CLOSE_INTERNAL_ERROR
            await send({"type": "websocket.close", "code": code})


async def _send_problem(send: Send, status: int, detail: str) -> None:
    body = problem_document(status, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *([(b"retry-after", b"2")] if status == 503 else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
