"""The dependency contract (pipeline/contracts.py) against the installed arq, hypercorn, redis-py.

Each check looks at the real objects: an arq ``Worker``, a hypercorn ``WSStream``, the error
redis-py raises for a real refused connection. Another pair of tests reads runner.py and live.py
and fails when they use an internal name the contract does not list.
"""

from __future__ import annotations

import ast
import asyncio
import socket
import threading
from pathlib import Path

import pytest
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError

from pipeline import bus, contracts

PIPELINE = Path(contracts.__file__).parent


def test_arq_worker_has_every_name_the_runner_relies_on() -> None:
    contracts.check_arq()


def test_hypercorn_wsstream_is_what_the_raw_frame_writer_relies_on() -> None:
    contracts.check_hypercorn()


def test_redis_py_words_a_refused_connection_as_bus_expects() -> None:
    wording = asyncio.run(contracts.refused_connection_error())
    assert contracts.REDIS_REFUSED_WORDING in wording, (
        f"redis-py now words a refused connection {wording!r}: bus.Enqueuer would take it for a "
        f"dropped one (maybe sent). Update REDIS_REFUSED_WORDING in pipeline/contracts.py."
    )
    asyncio.run(contracts.check_redis())


def test_a_connection_dropped_after_sending_is_not_worded_as_refused() -> None:
    # A server that takes the command and hangs up: the command may have been run.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up_after_reading() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)

        server = threading.Thread(target=hang_up_after_reading, daemon=True)
        server.start()

        async def ping() -> str:
            redis = bus.connect(f"redis://127.0.0.1:{port}/0", retry_dropped=False)
            try:
                await redis.ping()
            except RedisConnectionError as exc:
                return str(exc)
            finally:
                await redis.aclose(close_connection_pool=True)
            raise AssertionError("the server answered nothing, yet PING succeeded")

        wording = asyncio.run(ping())
        server.join(5)
    assert contracts.REDIS_REFUSED_WORDING not in wording, (
        f"redis-py words a dropped connection {wording!r}, like a refused one: bus.Enqueuer would "
        f"answer 503 'not queued' for a message that may be queued (pipeline/contracts.py)."
    )


def test_a_missing_name_is_named_in_the_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(contracts.ARQ_WORKER_ATTRIBUTES, "no_such_name", "a test's invention")
    with pytest.raises(contracts.ContractBroken, match=r"arq: .*Worker\(\)\.no_such_name"):
        contracts.check()
    monkeypatch.setitem(contracts.HYPERCORN_WSSTREAM_ATTRIBUTES, "no_such_stream_name", "invented")
    with pytest.raises(contracts.ContractBroken, match=r"hypercorn: .*WSStream\.no_such_stream_name"):
        contracts.check_hypercorn()


def _arq_names() -> set[str]:
    async def job(_: dict[str, object]) -> None:
        pass

    async def make() -> Worker:
        return Worker(functions=[func(job, name="job")], redis_pool=bus.connect("redis://127.0.0.1:1"))

    loop = asyncio.new_event_loop()
    try:
        worker = loop.run_until_complete(make())
    finally:
        loop.close()
    return {name for name in {*dir(Worker), *vars(worker)} if not name.startswith("__")}


def test_the_contract_lists_every_arq_name_the_runner_uses() -> None:
    tree = ast.parse((PIPELINE / "runner.py").read_text())
    (worker_class,) = [
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "BatchingWorker"
    ]
    used: set[str] = set()
    for node in ast.walk(worker_class):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            used.add(node.attr)  # self.<name>
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call):
            if isinstance(node.value.func, ast.Name) and node.value.func.id == "super":
                used.add(node.attr)  # super().<name>
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node in worker_class.body:
            used.add(node.name)  # an override
    listed = {*contracts.ARQ_WORKER_METHODS, *contracts.ARQ_WORKER_ATTRIBUTES}
    unlisted = sorted((used & _arq_names()) - listed - {"__init__"})
    assert not unlisted, (
        f"runner.py uses arq Worker internals that pipeline/contracts.py does not list: {unlisted}"
    )


def test_the_contract_lists_every_hypercorn_name_the_writer_uses() -> None:
    tree = ast.parse((PIPELINE / "live.py").read_text())
    (writer,) = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "_frame_writer"
    ]
    on_stream: set[str] = set()
    data_fields: set[str] = set()
    for node in ast.walk(writer):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "stream":
            on_stream.add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Data":
            data_fields.update(keyword.arg for keyword in node.keywords if keyword.arg)
    assert on_stream, "live._frame_writer no longer writes to hypercorn's stream: update this test"
    listed = {*contracts.HYPERCORN_WSSTREAM_ATTRIBUTES, *contracts.HYPERCORN_WSSTREAM_SET_LATER}
    unlisted = sorted(on_stream - listed)
    assert not unlisted, f"live.py uses WSStream names pipeline/contracts.py does not list: {unlisted}"
    unlisted = sorted(data_fields - set(contracts.HYPERCORN_DATA_FIELDS))
    assert not unlisted, f"live.py uses Data fields pipeline/contracts.py does not list: {unlisted}"
