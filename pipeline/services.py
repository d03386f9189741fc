"""What a web process holds while it serves: created by ``app``, used by ``api`` and ``live``."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from quart import current_app

from .bus import Enqueuer
from .config import Settings
from .hub import Hub
from .store import Store

EXTENSION_KEY = "pipeline"


@dataclass
class Services:
    """The web process's long-lived parts."""

    settings: Settings
    redis: ArqRedis
    enqueuer: Enqueuer
    store: Store
    hub: Hub
    # The database's epoch (SPEC §10), read once at start.
    epoch: str = ""


def services() -> Services:
    """The services of the app handling the current request."""
    found: Services = current_app.extensions[EXTENSION_KEY]
    return found
