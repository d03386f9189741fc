"""What we rely on in our dependencies beyond their documented API: the one list, checked at start.

- **arq** (``runner.py``): ``BatchingWorker`` subclasses arq's ``Worker`` and uses its internal
  names: :data:`ARQ_WORKER_METHODS` (it overrides or calls them), :data:`ARQ_WORKER_ATTRIBUTES`
  (state it reads and writes), and :data:`ARQ_WORKER_CALLS` (arq's own methods must still call
  the ones we override, or an override is silently skipped). arq 0.25, for one, lacks some and
  the worker would die with ``AttributeError`` mid-run.
- **hypercorn** (``live.py``): the WebSocket raw-frame writer finds hypercorn's ``WSStream``
  behind the ASGI ``send`` (``send.__self__``: hypercorn hands the app its bound ``app_send``)
  and writes ``Data(stream_id=..., data=...)`` events to ``stream.send``, after looking at
  ``stream.closed``: :data:`HYPERCORN_WSSTREAM_ATTRIBUTES`. Without them it falls back to plain
  ASGI messages, and says so (``/healthz`` ``live.websocket_writer``). The hub's direct hand-out
  to an idle stream writes to the connection's transport (found as ``bounds`` finds it, below)
  after the same checks.
- **hypercorn** (``live.py``, ``bounds.py``, ``web.py``; the bounds under attack): the stream's
  ``handshake`` (its ``extensions`` set to None before accepting, so no permessage-deflate is
  negotiated) and ``connection`` (wsproto's; its state shows a close hypercorn sent itself, e.g.
  1009): :data:`HYPERCORN_WSSTREAM_SET_LATER`, set by ``handle`` and ``_accept``. ``bounds`` finds
  the connection's transport behind ``send`` (stream ``.send.__self__`` is ``H11Protocol``, whose
  ``.send.__self__`` is the ``TCPServer`` with ``writer``), and ``web`` replaces
  ``H11Protocol._check_protocol`` (the one place that switches to h2c): :func:`check_hypercorn_bounds`.
- **redis-py** (``bus.py``): a refused connection (nothing was sent) is told from a dropped one
  (the command may have reached Redis) by its wording, :data:`REDIS_REFUSED_WORDING`; there is
  no separate exception class for it.

:func:`check` raises :class:`ContractBroken`, naming the missing piece, when an installed
version no longer has one of these; the web and worker processes call it when they start, and
``tests/test_contracts.py`` checks the real objects (a redis-py error from a real refused
connection among them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any, NoReturn

ARQ_WORKER_METHODS: dict[str, str] = {
    "start_jobs": "overridden: claims a batch of due jobs with one script (arq calls it each poll)",
    "_poll_iteration": "called each turn: starts jobs, reaps finished tasks, writes the health check",
    "_release_sem_dec_counter_on_complete": "extended: a finished job frees its slot, then wakes the poll",
    "close": "extended: lets running jobs end and hands back cancelled ones before arq's own close",
    "handle_sig_wait_for_completion": "arq's SIGTERM handler: stops picking jobs, then cancels main",
    "main": "overridden: polls when woken (arq's run() calls it)",
    "run": "the process's entry point: main() then close()",
}
ARQ_WORKER_ATTRIBUTES: dict[str, str] = {
    "tasks": "running job tasks by job id",
    "sem": "the semaphore bounding running jobs",
    "job_counter": "how many jobs run now",
    "max_jobs": "the bound on running jobs",
    "pool": "the Redis client",
    "_pool": "the Redis client, None once closed",
    "ctx": "the context every job gets",
    "functions": "job functions by name (each with .coroutine and .timeout_s)",
    "job_deserializer": "decodes a job's data",
    "in_progress_timeout_s": "how long a claimed job's in-progress key lives",
    "poll_delay_s": "the fallback poll interval",
    "allow_pick_jobs": "False once a signal asked the worker to stop",
    "queue_name": "the sorted set of queued jobs",
    "job_timeout_s": "the default job timeout",
    "jobs_complete": "a counter arq logs at shutdown",
    "jobs_failed": "a counter arq logs at shutdown",
    "jobs_retried": "a counter arq logs at shutdown",
    "on_startup": "the startup hook (main is ours, so we call it)",
    "loop": "the event loop jobs are started on",
}
# (arq method, name it must use): our overrides only take effect if arq still calls them there.
ARQ_WORKER_CALLS: tuple[tuple[str, str], ...] = (
    ("_poll_iteration", "start_jobs"),
    ("_poll_iteration", "tasks"),
    ("handle_sig_wait_for_completion", "allow_pick_jobs"),
    ("run", "main"),
    ("run", "close"),
)
ARQ_FUNCTION_FIELDS = ("coroutine", "timeout_s")

HYPERCORN_WSSTREAM_ATTRIBUTES: dict[str, str] = {
    "app_send": "the ASGI send hypercorn gives the app (a bound method: its __self__ is the stream)",
    "send": "writes protocol events (Data: raw bytes) to the connection",
    "stream_id": "the stream's id, for Data events",
    "closed": "True once the connection is closed",
}
HYPERCORN_DATA_FIELDS = ("stream_id", "data")
# WSStream attributes that exist only once a request came (handle) or was accepted (_accept).
HYPERCORN_WSSTREAM_SET_LATER: dict[str, tuple[str, str]] = {
    "handshake": ("handle", "its extensions, set to None so no compression is negotiated"),
    "connection": ("_accept", "wsproto's connection; its state shows a close hypercorn sent (1009)"),
}

REDIS_REFUSED_WORDING = "connecting to"


class ContractBroken(RuntimeError):
    """An installed dependency no longer has something this code relies on."""


def check() -> None:
    """Raise ContractBroken naming the first missing piece of arq or hypercorn."""
    check_arq()
    check_hypercorn()
    check_hypercorn_bounds()


def check_arq() -> None:
    """arq's ``Worker`` still has the names ``runner.BatchingWorker`` relies on."""
    from arq.worker import Function, Worker, func

    for name in ARQ_WORKER_METHODS:
        if not callable(getattr(Worker, name, None)):
            _broken("arq", f"Worker.{name}", ARQ_WORKER_METHODS[name])
    worker = _bare_arq_worker(Worker, func)
    for name in ARQ_WORKER_ATTRIBUTES:
        if not hasattr(worker, name):
            _broken("arq", f"Worker().{name}", ARQ_WORKER_ATTRIBUTES[name])
    for method, name in ARQ_WORKER_CALLS:
        if name not in getattr(Worker, method).__code__.co_names:
            _broken(
                "arq", f"Worker.{method} using {name}", f"our {name} is only used if arq's {method} uses it"
            )
    fields = {field.name for field in dataclasses.fields(Function)}
    for name in ARQ_FUNCTION_FIELDS:
        if name not in fields:
            _broken("arq", f"Function.{name}", "runner.py runs jobs itself")


def check_hypercorn() -> None:
    """hypercorn's ``WSStream`` and ``Data`` event are still what the raw-frame writer uses."""
    from hypercorn.config import Config
    from hypercorn.protocol.events import Data
    from hypercorn.protocol.ws_stream import WSStream

    async def send(_: Any) -> None:
        pass

    try:
        stream = WSStream(None, Config(), None, None, False, None, None, send, 1)  # type: ignore[arg-type]
    except TypeError as exc:
        _broken(
            "hypercorn", "WSStream(app, config, context, task_group, ssl, client, server, send, id)", str(exc)
        )
    for name in HYPERCORN_WSSTREAM_ATTRIBUTES:
        if not hasattr(stream, name):
            _broken("hypercorn", f"WSStream.{name}", HYPERCORN_WSSTREAM_ATTRIBUTES[name])
    if getattr(stream.app_send, "__self__", None) is not stream:
        _broken("hypercorn", "WSStream.app_send.__self__", "the writer finds the stream behind send")
    if "app_send" not in WSStream.handle.__code__.co_names:
        _broken(
            "hypercorn", "WSStream.handle passing app_send", "the app's send must be the stream's app_send"
        )
    fields = {field.name for field in dataclasses.fields(Data)}
    for name in HYPERCORN_DATA_FIELDS:
        if name not in fields:
            _broken("hypercorn", f"Data.{name}", "the writer sends Data(stream_id=..., data=...)")


def check_hypercorn_bounds() -> None:
    """hypercorn's names the bounds under attack rely on (see the module docstring)."""
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.ws_stream import Handshake, WSStream

    for name, (method, why) in HYPERCORN_WSSTREAM_SET_LATER.items():
        if name not in getattr(WSStream, method).__code__.co_names:
            _broken("hypercorn", f"WSStream.{method} setting {name}", why)
    if "extensions" not in Handshake.accept.__code__.co_names:
        _broken("hypercorn", "Handshake.accept using extensions", "no compression is offered through it")
    if "_check_protocol" not in H11Protocol._handle_events.__code__.co_names:
        _broken("hypercorn", "H11Protocol._check_protocol", "web.py turns h2c off by replacing it")
    if "writer" not in TCPServer.protocol_send.__code__.co_names:
        _broken("hypercorn", "TCPServer.writer", "bounds.transport_of finds the connection's transport")


async def refused_connection_error() -> str:
    """The text of the error redis-py raises (through ``bus.connect``'s client, without retries)
    when nothing listens at the address: what ``bus`` looks for :data:`REDIS_REFUSED_WORDING` in."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from .bus import connect

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    redis = connect(f"redis://127.0.0.1:{port}/0", retry_dropped=False)
    try:
        await redis.ping()
    except RedisConnectionError as exc:
        return str(exc)
    finally:
        await redis.aclose(close_connection_pool=True)
    raise ContractBroken(f"redis-py: something answered PING at 127.0.0.1:{port}, which was just closed")


async def check_redis() -> None:
    """redis-py still words a refused connection the way ``bus`` expects."""
    async with asyncio.timeout(5):
        wording = await refused_connection_error()
    if REDIS_REFUSED_WORDING not in wording:
        _broken(
            "redis-py", f"{REDIS_REFUSED_WORDING!r} in a refused connection's error", f"it said {wording!r}"
        )


def _bare_arq_worker(worker_class: Any, func: Any) -> Any:
    # A Worker that never runs: no Redis connection is made, no signal handler set. (Made on a
    # loop of its own, running, so that arq takes that one and sets none for the thread.)
    from arq.connections import ArqRedis

    async def job(_: dict[str, Any]) -> None:
        pass

    async def make() -> Any:
        return worker_class(functions=[func(job, name="job")], redis_pool=ArqRedis(), handle_signals=False)

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


def _broken(dependency: str, piece: str, why: str) -> NoReturn:
    raise ContractBroken(
        f"{dependency}: the installed version lacks {piece} ({why}); see pipeline/contracts.py"
    )
