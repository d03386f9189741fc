"""Live delivery (SPEC §4) over real WebSocket and SSE connections."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support import Pipeline, SSEReader, send, wait_stored


def ws_url(client: httpx.Client, path: str = "/ws") -> str:
    return str(client.base_url).replace("http://", "ws://") + path


def ws_messages(ws: ClientConnection, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    """The next ``count`` message events, skipping pings."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        frame = json.loads(ws.recv(timeout=timeout_s))
        assert frame["event"] in ("message", "ping"), frame
        if frame["event"] == "message":
            found.append(frame["data"])
    return found


def test_websocket_receives_what_is_stored_after_it_opened(client: httpx.Client) -> None:
    send(client, "before")
    wait_stored(client, 1)
    with connect(ws_url(client)) as ws:
        acks = [send(client, {"n": n}).json() for n in range(3)]
        received = ws_messages(ws, 3)
    assert [m["payload"] for m in received] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m["id"] for m in received] == [a["id"] for a in acks]
    assert list(received[0]) == ["id", "seq", "channel", "payload", "received_at", "persisted_at"]
    assert received == [m for m in client.get("/messages").json() if m["payload"] != "before"]


def test_websocket_resumes_after_a_seq_without_gap_or_duplicate(client: httpx.Client) -> None:
    for n in range(5):
        send(client, n)
    rows = wait_stored(client, 5)
    with connect(ws_url(client) + f"?after={rows[1]['seq']}") as ws:
        replayed = ws_messages(ws, 3)
        send(client, 5)
        live = ws_messages(ws, 1)
    assert [m["payload"] for m in replayed + live] == [2, 3, 4, 5]


def test_seed_websocket_path(client: httpx.Client) -> None:
    with connect(ws_url(client, "/json_dummy_ws")) as ws:
        send(client, {"seed": "ws"})
        assert ws_messages(ws, 1)[0]["payload"] == {"seed": "ws"}


def test_sse_receives_live_messages(client: httpx.Client) -> None:
    reader = SSEReader(client, "/events")
    try:
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        assert reader.response.headers["cache-control"] == "no-cache"
        assert reader.response.headers["x-accel-buffering"] == "no"
        send(client, {"over": "sse"})
        send(client, "second")
        received = reader.messages(2)
    finally:
        reader.close()
    assert [m["payload"] for m in received] == [{"over": "sse"}, "second"]


@pytest.mark.parametrize("how", ["query", "header"])
def test_sse_resumes_from_last_event_id_or_after(client: httpx.Client, how: str) -> None:
    for n in range(4):
        send(client, n)
    rows = wait_stored(client, 4)
    seq = str(rows[0]["seq"])
    if how == "query":
        reader = SSEReader(client, f"/events?after={seq}")
    else:
        reader = SSEReader(client, "/events", headers={"Last-Event-ID": seq})
    try:
        replayed = reader.messages(3)
        send(client, 4)
        live = reader.messages(1)
    finally:
        reader.close()
    assert [m["payload"] for m in replayed + live] == [1, 2, 3, 4]


def test_payload_line_breaks_survive_sse(client: httpx.Client) -> None:
    body = '{\n  "multi": [1,\r\n 2]\n}'
    reader = SSEReader(client, "/events")
    try:
        client.put("/messages", content=body)
        (received,) = reader.messages(1)
    finally:
        reader.close()
    assert received["payload"] == {"multi": [1, 2]}


def test_pings_carry_the_latest_seq(pipeline: Pipeline) -> None:
    url = pipeline.start_web(PING_INTERVAL_S="0.3")
    pipeline.start_worker()
    with httpx.Client(base_url=url, timeout=10) as client:
        send(client, "x")
        seq = wait_stored(client, 1)[0]["seq"]
        with connect(ws_url(client)) as ws:
            frame = json.loads(ws.recv(timeout=5))
        assert frame == {"event": "ping", "data": {"seq": seq}}
        reader = SSEReader(client, "/events")
        try:
            assert reader.next_event() == {"retry": "1000"}
            assert reader.next_event() == {"comment": "ping"}
        finally:
            reader.close()


def test_foreign_origins_are_refused(client: httpx.Client) -> None:
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(client), origin="http://evil.example"):  # type: ignore[arg-type]
        pass
    assert refused.value.response.status_code == 403
    response = client.get("/events", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    # The page's own origin, and clients that send none, are fine.
    own = str(client.base_url).rstrip("/")
    with connect(ws_url(client), origin=own) as ws:  # type: ignore[arg-type]
        send(client, "same origin")
        assert ws_messages(ws, 1)[0]["payload"] == "same origin"


def test_allowed_origins_setting(pipeline: Pipeline) -> None:
    url = pipeline.start_web(ALLOWED_ORIGINS="https://app.example, https://other.example")
    ws = url.replace("http://", "ws://") + "/ws"
    with connect(ws, origin="https://app.example") as allowed:  # type: ignore[arg-type]
        allowed.ping().wait(5)
    # The page's own origin stays allowed: the setting adds origins, it cannot lock the page out.
    with connect(ws, origin=url) as own:  # type: ignore[arg-type]
        own.ping().wait(5)
    with pytest.raises(InvalidStatus) as refused, connect(ws, origin="https://third.example"):  # type: ignore[arg-type]
        pass
    assert refused.value.response.status_code == 403


def test_bad_after_is_400(client: httpx.Client) -> None:
    response = client.get("/events?after=abc")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(client) + "?after=-3"):
        pass
    assert refused.value.response.status_code == 400


def test_large_incoming_frames_close_the_websocket(client: httpx.Client) -> None:
    with connect(ws_url(client)) as ws:
        ws.send("small frames are ignored")
        send(client, "still open")
        assert ws_messages(ws, 1)[0]["payload"] == "still open"
        ws.send("x" * 100_000)
        with pytest.raises(ConnectionClosed) as closed:
            ws_messages(ws, 1)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_many_clients_each_get_everything_in_order(client: httpx.Client) -> None:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(ws_url(client))) for _ in range(20)]
        readers = [SSEReader(client, "/events") for _ in range(5)]
        for reader in readers:
            stack.callback(reader.close)
        for n in range(30):
            send(client, n)
        for ws in sockets:
            assert [m["payload"] for m in ws_messages(ws, 30)] == list(range(30))
        for reader in readers:
            assert [m["payload"] for m in reader.messages(30)] == list(range(30))
