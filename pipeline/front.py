"""The ASGI layer in front of Quart: the two hot paths served directly, everything else by Quart.

Ingest (``POST``/``PUT`` on the ingest paths) and WebSocket streams run thousands of times a
second; for them Quart's per-request and per-message work (request and context objects,
routing, hooks, re-encoding each frame per connection) cost more than the work itself. Quart's
own routes for both stay in the app (``api.ingest_route``, ``live.ws``) as the reference, with
the same core functions (``ingest.accept``, ``live.follow``); ``test_ingest`` checks the two
answer alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .asgi import ASGIApp, Receive, Scope, Send
from .bounds import ambiguous_framing, refuse_ambiguous_framing
from .ingest import INGEST_PATHS, serve_ingest
from .live import EVENTS_PATHS, WEBSOCKET_PATHS, guard_events, serve_websocket
from .services import EXTENSION_KEY, Services


class Front:
    """Routes hot requests to their direct handlers and the rest to ``app`` (Quart)."""

    def __init__(self, app: ASGIApp, extensions: Mapping[str, Any]) -> None:
        self.app = app
        self._extensions = extensions  # the Quart app's: holds Services while serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ambiguous_framing(scope["headers"]):
            await refuse_ambiguous_framing(send)
            return
        found: Services | None = self._extensions.get(EXTENSION_KEY)
        if found is not None:
            kind, path = scope["type"], scope.get("path")
            if kind == "http" and scope["method"] in ("POST", "PUT") and path in INGEST_PATHS:
                await serve_ingest(found, scope, receive, send)
                return
            if kind == "websocket" and path in WEBSOCKET_PATHS:
                await serve_websocket(found, scope, receive, send)
                return
            if kind == "http" and path in EVENTS_PATHS:
                send = guard_events(scope, send)
        await self.app(scope, receive, send)
