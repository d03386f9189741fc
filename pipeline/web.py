"""Serve the app with hypercorn (on uvloop), stopping gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import cast

import uvloop
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework

from . import contracts
from .app import close_streams, create_app
from .config import Settings
from .front import Front

# Clients only send tiny control messages; a larger one closes the connection (SPEC §4).
MAX_INCOMING_WS_BYTES = 4096
# Time given to open connections to finish once streams were told to close.
GRACEFUL_TIMEOUT_S = 3.0


def hypercorn_config(settings: Settings, *, shared_port: socket.socket | None = None) -> Config:
    """Hypercorn settings for one web process (listening on ``shared_port`` if given)."""
    config = Config()
    config.bind = [f"fd://{shared_port.fileno()}"] if shared_port else [f"{settings.host}:{settings.port}"]
    config.websocket_max_message_size = MAX_INCOMING_WS_BYTES
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.backlog = 2048
    config.accesslog = None
    # Hypercorn's own logger, left to the root handler (run.py) instead of a second stream.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def shared_listener(host: str, port: int) -> socket.socket:
    """A listening address that several web processes bind at once (SO_REUSEPORT: the kernel
    spreads connections over them). Only for processes started together, by run.py: a stray
    second server would share the port silently instead of failing to start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host.strip("[]"), port))
    return sock


async def serve(settings: Settings, *, share_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then close streams and stop accepting."""
    await contracts.check_redis()
    app = create_app(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    async def shutdown_trigger() -> None:
        await stopping.wait()
        close_streams(app)

    # Ingest and WebSocket streams are served in front of Quart (see front.py).
    served = cast(ASGIFramework, Front(app))
    listener = shared_listener(settings.host, settings.port) if share_port else None
    config = hypercorn_config(settings, shared_port=listener)
    await hypercorn_serve(served, config, shutdown_trigger=shutdown_trigger)


def run(settings: Settings, *, share_port: bool = False) -> None:
    """Run one web process."""
    contracts.check()
    uvloop.run(serve(settings, share_port=share_port))
