"""Serve the app with hypercorn (on uvloop), stopping gracefully on SIGTERM or SIGINT.

HTTP/1.1 only: hypercorn would switch a cleartext connection to HTTP/2 on ``Upgrade: h2c`` or
the HTTP/2 preface ("prior knowledge"), and its h2 layer logs a traceback under a rapid-reset
flood (thousands of streams opened and reset). It has no setting to turn h2c off, so
:func:`_http1_only` replaces ``H11Protocol._check_protocol`` (the one place that decides) with a
no-op: such requests are answered as HTTP/1.1. Platforms (Heroku's router) speak HTTP/1.1 to
the process anyway; HTTP/2 to browsers belongs to the TLS proxy in front.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from typing import cast

import uvloop
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import ASGIFramework

from . import contracts
from .access import Access
from .app import close_streams, create_app
from .bounds import RefuseAmbiguousFraming
from .config import Settings
from .front import Front

# Clients only send tiny control messages; a larger one closes the connection (SPEC §4).
MAX_INCOMING_WS_BYTES = 4096
# Time given to open connections to finish once streams were told to close.
GRACEFUL_TIMEOUT_S = 3.0
# After SIGTERM/SIGINT the process is gone within this, even if something is stuck.
_STOP_DEADLINE_S = GRACEFUL_TIMEOUT_S + 5.0

log = logging.getLogger(__name__)


def _http1_only() -> None:
    async def serve_as_http1(self: H11Protocol, event: object) -> None:
        return None

    H11Protocol._check_protocol = serve_as_http1  # type: ignore[method-assign]


def hypercorn_config(settings: Settings, *, shared_port: socket.socket | None = None) -> Config:
    """Hypercorn settings for one web process (listening on ``shared_port`` if given)."""
    config = Config()
    config.bind = [f"fd://{shared_port.fileno()}"] if shared_port else [f"{settings.host}:{settings.port}"]
    config.websocket_max_message_size = MAX_INCOMING_WS_BYTES
    config.alpn_protocols = ["http/1.1"]
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.backlog = 2048
    config.accesslog = None
    # Hypercorn's own logger, left to the root handler (run.py) instead of a second stream.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(settings: Settings, listener: socket.socket) -> None:
    """Serve on ``listener`` until SIGTERM/SIGINT, then close streams and stop accepting."""
    _http1_only()
    await contracts.check_redis()
    app = create_app(settings)
    stopping = asyncio.Event()
    serving = asyncio.Event()  # hypercorn awaits the shutdown trigger once it serves
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop_within, stopping, serving)

    async def shutdown_trigger() -> None:
        serving.set()
        await stopping.wait()
        close_streams(app)

    # Ingest and WebSocket streams are served in front of Quart (see front.py); the access
    # checks (access.py) come before both.
    # Outermost: a request that says both Content-Length and Transfer-Encoding (bounds.py).
    served = cast(ASGIFramework, RefuseAmbiguousFraming(Access(Front(app), settings)))
    config = hypercorn_config(settings, shared_port=listener)
    try:
        await hypercorn_serve(served, config, shutdown_trigger=shutdown_trigger)
    except Exception:
        # Startup failed (the database never answered, say). What a half-started app leaves
        # behind may not end when cancelled: exit now rather than hang (SPEC §6).
        log.exception("the web process failed")
        _exit(1)


def _stop_within(stopping: asyncio.Event, serving: asyncio.Event) -> None:
    """SIGTERM/SIGINT: still starting, exit at once (nothing to finish); serving, stop
    gracefully, and exit within _STOP_DEADLINE_S even if something will not end."""
    if not serving.is_set():
        _exit(0)
    if not stopping.is_set():
        stopping.set()
        timer = threading.Timer(_STOP_DEADLINE_S, _exit, (1,))
        timer.daemon = True
        timer.start()


def _exit(status: int) -> None:
    logging.shutdown()
    os._exit(status)


def run(settings: Settings, listener: socket.socket) -> None:
    """Run one web process on ``listener`` (see pipeline.listen)."""
    contracts.check()
    uvloop.run(serve(settings, listener))
