"""The route table in front of Quart (``front.ROUTES``), served by ``python run.py web``."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
from websockets.sync.client import connect

from pipeline.bus import IDEMPOTENCY_PREFIX
from pipeline.front import ROUTES
from tests.support import Pipeline, RedisServer, send, wait_until


def _allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers.get("allow", "").split(",")}


def test_other_methods_on_the_fast_paths_are_405_naming_every_allowed_method(pipeline: Pipeline) -> None:
    url = pipeline.start_web()
    with httpx.Client(base_url=url, timeout=10) as client:
        for route in ROUTES:
            if route.scope != "http":
                continue
            for path in route.paths:
                response = client.request("DELETE", path)
                assert response.status_code == 405, f"DELETE {path}: {response.status_code}"
                assert response.headers["content-type"] == "application/problem+json"
                assert _allowed(response) >= set(route.methods), f"DELETE {path}: {response.headers}"
                options = client.request("OPTIONS", path)
                assert _allowed(options) >= set(route.methods), f"OPTIONS {path}: {options.headers}"


def test_an_unexpected_error_on_the_fast_path_is_a_logged_problem_500(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    """An error nobody planned for, from a real cause: an idempotency record in Redis that
    something else wrote (not in our format). The answer is still a problem document, the
    traceback is logged once, and the process goes on serving."""
    url = pipeline.start_web()
    key = "written-by-someone-else"
    redis_server.command("SET", IDEMPOTENCY_PREFIX + hashlib.sha256(key.encode()).hexdigest(), "garbage")
    log = f"web-{url.rsplit(':', 1)[1]}"
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.put("/messages", content=b"1", headers={"Idempotency-Key": key})
        assert response.status_code == 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 500 and problem["title"] == "Internal Server Error"
        assert "Traceback" not in response.text
        # The next request on this keep-alive connection is read only once the failed one has
        # ended, and so after anything hypercorn would log about it.
        assert client.put("/messages", content=b"2").status_code == 202
        wait_until(lambda: "Traceback" in pipeline.log(log), timeout_s=5)
        time.sleep(0.2)
    # The traceback is in the log, once (not again by hypercorn).
    assert pipeline.log(log).count("Traceback") == 1, pipeline.log(log)
    assert "unexpected error serving PUT /messages" in pipeline.log(log)


def test_websocket_streams_use_the_raw_frame_writer_under_hypercorn(pipeline: Pipeline) -> None:
    url = pipeline.start_web()
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    log = f"web-{url.rsplit(':', 1)[1]}"
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").json()["live"]["websocket_writer"] is None  # no stream yet
        websocket_paths = [path for route in ROUTES if route.scope == "websocket" for path in route.paths]
        for number, path in enumerate(websocket_paths):
            with connect(url.replace("http://", "ws://") + path) as ws:
                send(client, {"n": number})
                frame = json.loads(ws.recv(timeout=10))
                assert frame["event"] == "message" and frame["data"]["payload"] == {"n": number}
        writer = client.get("/healthz").json()["live"]["websocket_writer"]
    assert writer == "hypercorn-raw", f"the WebSocket frames went out through the {writer!r} writer"
    assert pipeline.log(log).count("written by the hypercorn-raw writer") == 1, pipeline.log(log)
