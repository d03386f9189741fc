"""Stopping background tasks without trusting them to end."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

STOP_TIMEOUT_S = 2.0


async def cancel_and_wait(tasks: Collection[asyncio.Task[None]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Cancel ``tasks`` and wait, at most ``timeout_s``, for them to end.

    It never awaits a task directly. A task may swallow its cancellation (seen here on Python
    3.11 inside redis-py's asyncio client, now and then), and a shutdown that waits for it would
    hang; and a caller that is itself being cancelled cannot tell its own CancelledError from
    the task's when it awaits the task.
    """
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
