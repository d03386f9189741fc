"""Access (SPEC §8): private reads, sessions, write tokens, Origin and Host checks.

Everything goes through real web and worker processes over sockets; raw sockets where a client
library would tidy the headers (two Authorization or Host headers, odd Host values).
"""

from __future__ import annotations

import asyncio
import calendar
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pipeline.app import create_app
from pipeline.config import load_settings
from tests.support import Pipeline, RedisServer, SSEReader, send, wait_until

READ = "read-one,read-two"
WRITE = "write-one"
EVIL = "http://evil.example"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    return document


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, list[str]], bytes]:
    """Send ``head`` (request line and headers, ``\\n``-separated, without the blank line) and
    ``body`` byte for byte; the response's status, headers (lower-case names) and body."""
    request = head.strip().replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get("content-length", ["0"])[0])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest


def raw_problem(port: int, head: str, status: int, body: bytes = b"") -> dict[str, Any]:
    got, headers, content = raw(port, head, body)
    assert got == status, (got, content)
    assert headers["content-type"] == ["application/problem+json"]
    document: dict[str, Any] = json.loads(content)
    assert document["status"] == status
    return document


WS_UPGRADE = (
    "Upgrade: websocket\nConnection: Upgrade\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13"
)


def ws_refusal(url: str, path: str = "/ws", **headers: str) -> int:
    """The HTTP status with which a WebSocket handshake is refused (fails if it opens)."""
    ws_url = url.replace("http://", "ws://") + path
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(ws_url, additional_headers=headers, open_timeout=10),
    ):
        pass
    status: int = refused.value.response.status_code
    return status


def count_after_drain(
    client: httpx.Client, reader: dict[str, str], writer: dict[str, str] | None = None
) -> int:
    """How many messages are stored once the worker drained what was accepted: a last good
    message goes in after everything else; when it is stored, so is all that came before."""
    marker = client.put("/messages", content='"drain marker"', headers=reader if writer is None else writer)
    assert marker.status_code == 202
    marker_id = marker.json()["id"]

    def drained() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = client.get("/messages", headers=reader).json()
        return rows if any(row["id"] == marker_id for row in rows) else None

    return len(wait_until(drained, timeout_s=20)) - 1


@pytest.fixture
def private(pipeline: Pipeline) -> Iterator[tuple[Pipeline, httpx.Client]]:
    """A web and a worker with READ_TOKEN and INGEST_TOKEN set."""
    url = pipeline.start_web(READ_TOKEN=READ, INGEST_TOKEN=WRITE)
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        yield pipeline, client


def sign_in(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    return client.post(
        "/session",
        content=json.dumps({"token": token}),
        headers={"Content-Type": "application/json", **headers},
    )


def cookie_of(response: httpx.Response) -> str:
    """``pipeline_session=<value>`` from a sign-in's Set-Cookie."""
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith("pipeline_session=")
    return set_cookie.split(";")[0]


# --- reads ------------------------------------------------------------------------------------


def test_reads_need_a_read_token(private: tuple[Pipeline, httpx.Client]) -> None:
    _, client = private
    reader, writer = {"Authorization": "Bearer read-two"}, {"Authorization": f"Bearer {WRITE}"}
    accepted = client.put("/messages", content='{"secret": "hush-4711"}', headers=writer)
    assert accepted.status_code == 202
    message_id = accepted.json()["id"]
    wait_until(lambda: client.get(f"/messages/{message_id}", headers=reader).status_code == 200)

    for path in ("/messages", f"/messages/{message_id}", "/json_dummy", "/messages?tail=1", "/nowhere"):
        refused = client.get(path)
        assert_problem(refused, 401)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "hush-4711" not in refused.text
    assert client.head("/messages").status_code == 401
    # A stream is refused before it starts: a problem, not an event stream.
    with client.stream("GET", "/events") as events:
        assert events.status_code == 401, "the stream opened without a token"
        events.read()
        assert_problem(events, 401)
    assert ws_refusal(str(client.base_url)) == 401
    assert ws_refusal(str(client.base_url), "/json_dummy_ws") == 401

    # Either read token reads; a write token does not.
    assert client.get("/messages", headers={"Authorization": "Bearer read-one"}).json()[0]["id"] == message_id
    assert client.get(f"/messages/{message_id}", headers=reader).json()["payload"] == {"secret": "hush-4711"}
    assert_problem(client.get("/messages", headers=writer), 401)
    assert ws_refusal(str(client.base_url), **writer) == 401
    with connect(
        str(client.base_url).replace("http://", "ws://") + "/ws?after=0", additional_headers=reader
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["data"]["id"] == message_id
    stream = SSEReader(client, "/events?after=0", headers=reader)
    try:
        assert stream.messages(1)[0]["id"] == message_id
    finally:
        stream.close()

    # The page, its files, the health check and the session state stay open, with no content.
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 200 and "hush-4711" not in health.text and message_id not in health.text
    assert client.get("/session").json() == {
        "signed_in": False,
        "read_token_required": True,
        "ingest_token_required": True,
        "expires_at": None,
    }


@pytest.mark.parametrize(
    ("authorization", "reads"),
    [
        ("Bearer read-one", True),
        ("bearer read-one", True),
        ("BEARER read-two", True),
        ("  Bearer   read-one  ", True),
        ("Bearer\tread-one", False),  # the scheme ends at a space (RFC 9110 §11.4)
        ("Bearer", False),
        ("Bearer ", False),
        ("", False),
        ("read-one", False),
        ("Basic read-one", False),
        ("Bearer read-one,read-two", False),
        ("Bearer read-on", False),
        ("Bearer read-onee", False),
        ("Bearer " + "x" * 8000, False),
        ("Bearer read-one" + " " * 5000, True),  # trailing whitespace is not part of a header value
    ],
)
def test_authorization_header_shapes(
    private: tuple[Pipeline, httpx.Client], authorization: str, reads: bool
) -> None:
    _, client = private
    port = port_of(str(client.base_url))
    status, _, content = raw(
        port,
        f"GET /messages HTTP/1.1\nHost: 127.0.0.1:{port}\nAuthorization: {authorization}\nConnection: close",
    )
    assert status == (200 if reads else 401), content[:200]


def test_two_authorization_headers_are_refused_never_last_wins(
    private: tuple[Pipeline, httpx.Client],
) -> None:
    _, client = private
    port = port_of(str(client.base_url))
    host = f"Host: 127.0.0.1:{port}\nConnection: close"
    for first, second in (("Bearer nope", "Bearer read-one"), ("Bearer read-one", "Bearer read-one")):
        head = f"GET /messages HTTP/1.1\n{host}\nAuthorization: {first}\nAuthorization: {second}"
        raw_problem(port, head, 400)
        head = f"PUT /messages HTTP/1.1\n{host}\nAuthorization: Bearer nope\nAuthorization: Bearer {WRITE}"
        raw_problem(port, head + "\nContent-Length: 1", 400, b"1")
    head = f"GET /ws HTTP/1.1\n{host}\n{WS_UPGRADE}\nAuthorization: Bearer x\nAuthorization: Bearer read-one"
    raw_problem(port, head, 400)


# --- writes -----------------------------------------------------------------------------------


def test_a_read_token_does_not_write_and_a_write_token_does(private: tuple[Pipeline, httpx.Client]) -> None:
    _, client = private
    reader = {"Authorization": "Bearer read-one"}
    session = cookie_of(sign_in(client, "read-one"))
    for headers in ({}, reader, {"Cookie": session}, {"Authorization": "Bearer write-on"}):
        refused = client.put("/messages", content='"refused"', headers=headers)
        assert_problem(refused, 401)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert_problem(client.post("/json_dummy", content='"refused"', headers=headers), 401)
    assert send(client, "ok", Authorization=f"bEaReR {WRITE}").status_code == 202
    assert count_after_drain(client, reader, {"Authorization": f"Bearer {WRITE}"}) == 1


def test_one_token_may_both_read_and_write_when_listed_in_both(pipeline: Pipeline) -> None:
    url = pipeline.start_web(READ_TOKEN="both,reader", INGEST_TOKEN="writer,both")
    pipeline.start_worker()
    with httpx.Client(base_url=url, timeout=10) as client:
        assert send(client, 1, Authorization="Bearer both").status_code == 202
        assert send(client, 2, Authorization="Bearer writer").status_code == 202
        assert count_after_drain(client, {"Authorization": "Bearer both"}) == 2


# --- sessions ---------------------------------------------------------------------------------


def test_session_cookie_signs_the_page_in_everywhere(private: tuple[Pipeline, httpx.Client]) -> None:
    pipeline, client = private
    assert_problem(sign_in(client, "wrong"), 401)
    assert_problem(sign_in(client, WRITE), 401)  # a write token does not sign in to read
    assert_problem(
        client.post("/session", content="token=read-one", headers={"Content-Type": "text/plain"}), 415
    )
    assert_problem(
        client.post("/session", content='{"token": 1}', headers={"Content-Type": "application/json"}), 400
    )
    assert_problem(client.post("/session", content="{", headers={"Content-Type": "application/json"}), 400)
    huge = json.dumps({"token": "x" * 10_000})
    assert_problem(client.post("/session", content=huge, headers={"Content-Type": "application/json"}), 413)

    signed = sign_in(client, " read-one ")
    assert signed.status_code == 204
    attributes = [part.strip() for part in signed.headers["set-cookie"].split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(attributes)
    assert "Secure" not in attributes  # plain HTTP on loopback
    cookie = {"Cookie": cookie_of(signed)}
    state = client.get("/session", headers=cookie).json()
    assert state["signed_in"] is True and state["read_token_required"] is True
    expires = calendar.timegm(time.strptime(state["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - (time.time() + 43200)) < 120

    def reads_with(url: str, headers: dict[str, str]) -> bool:
        with httpx.Client(base_url=url, timeout=10) as other:
            status = other.get("/messages", headers=headers).status_code
            assert status in (200, 401)
            return status == 200

    # The cookie reads: GET, WebSocket, SSE.
    assert reads_with(str(client.base_url), cookie)
    with connect(str(client.base_url).replace("http://", "ws://") + "/ws", additional_headers=cookie) as ws:
        send(client, "live", Authorization=f"Bearer {WRITE}")
        assert json.loads(ws.recv(timeout=10))["data"]["payload"] == "live"
    stream = SSEReader(client, "/events?after=0", headers=cookie)
    try:
        assert stream.messages(1)[0]["payload"] == "live"
    finally:
        stream.close()

    # A tampered cookie does not.
    value = cookie["Cookie"]
    version, expiry, nonce, mac = value.split("=", 1)[1].split(".")
    for forged in (
        f"v1.{int(expiry) + 3600}.{nonce}.{mac}",
        f"v1.{expiry}.{nonce}x.{mac}",
        f"v1.{expiry}.{nonce}.{mac[:-2]}",
        f"v2.{expiry}.{nonce}.{mac}",
        "v1.9999999999.x.y",
        "",
    ):
        assert not reads_with(str(client.base_url), {"Cookie": f"pipeline_session={forged}"}), forged
    assert not reads_with(str(client.base_url), {"Cookie": f"other={value.split('=', 1)[1]}"})

    # Another web process accepts it, and so does one started after the first stopped.
    second = pipeline.start_web(READ_TOKEN=READ, INGEST_TOKEN=WRITE)
    assert reads_with(second, cookie)
    assert ws_refusal(second) == 401
    with connect(second.replace("http://", "ws://") + "/ws", additional_headers=cookie) as ws:
        ws.ping().wait(5)
    pipeline.stop()
    restarted = pipeline.start_web(READ_TOKEN=READ, INGEST_TOKEN=WRITE)
    assert reads_with(restarted, cookie)
    # Once its token leaves READ_TOKEN it stops working; a session from the other token goes on.
    with httpx.Client(base_url=restarted, timeout=10) as other:
        other_cookie = {"Cookie": cookie_of(sign_in(other, "read-two"))}
    pipeline.stop()
    rotated = pipeline.start_web(READ_TOKEN="read-two,read-three")
    assert not reads_with(rotated, cookie)
    assert reads_with(rotated, other_cookie)

    # Signing out clears the cookie.
    with httpx.Client(base_url=rotated, timeout=10) as other:
        out = other.delete("/session", headers=other_cookie)
        assert out.status_code == 204
        assert out.headers["set-cookie"].startswith("pipeline_session=;")
        assert "Max-Age=0" in out.headers["set-cookie"]
        # Behind an HTTPS proxy the cookie is Secure.
        secure = sign_in(other, "read-three", **{"X-Forwarded-Proto": "https"})
        assert "Secure" in [part.strip() for part in secure.headers["set-cookie"].split(";")]
        assert other.get("/session").json()["ingest_token_required"] is False
        assert_problem(other.put("/session"), 405)


def test_sign_in_from_another_site_is_refused(private: tuple[Pipeline, httpx.Client]) -> None:
    _, client = private
    assert_problem(sign_in(client, "read-one", Origin=EVIL), 403)  # login CSRF
    assert_problem(sign_in(client, "read-one", Origin="null"), 403)
    assert_problem(sign_in(client, "read-one", **{"Sec-Fetch-Site": "cross-site"}), 403)
    assert_problem(client.delete("/session", headers={"Origin": EVIL}), 403)
    own = str(client.base_url).rstrip("/")
    assert sign_in(client, "read-one", Origin=own, **{"Sec-Fetch-Site": "same-origin"}).status_code == 204


def test_without_read_token_reads_are_open_and_there_is_no_sign_in(client: httpx.Client) -> None:
    assert client.get("/messages").status_code == 200
    assert client.get("/session").json() == {
        "signed_in": False,
        "read_token_required": False,
        "ingest_token_required": False,
        "expires_at": None,
    }
    assert_problem(sign_in(client, "anything"), 400)


# --- other sites ------------------------------------------------------------------------------

# What a page on another site can make a browser send, exactly (Chromium's headers).
CROSS_SITE_WRITES = {
    "form text/plain": {
        "Content-Type": "text/plain",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
    },
    "form urlencoded": {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Mode": "navigate"},
    "form multipart": {"Content-Type": "multipart/form-data; boundary=----x", "Sec-Fetch-Mode": "navigate"},
    "fetch no-cors": {
        "Content-Type": "text/plain;charset=UTF-8",
        "Sec-Fetch-Mode": "no-cors",
        "Sec-Fetch-Dest": "empty",
    },
    "fetch text/plain": {
        "Content-Type": "text/plain;charset=UTF-8",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Dest": "empty",
    },
    "sendBeacon": {
        "Content-Type": "text/plain;charset=UTF-8",
        "Sec-Fetch-Mode": "no-cors",
        "Sec-Fetch-Dest": "empty",
    },
}


def test_cross_site_writes_are_refused_and_store_nothing(client: httpx.Client) -> None:
    for origin in (EVIL, "null", "https://127.0.0.1.evil.example", "http://127.0.0.1", "127.0.0.1"):
        for shape, headers in CROSS_SITE_WRITES.items():
            for method in ("POST", "PUT"):
                for path in ("/messages", "/json_dummy", "/json_dummy/"):
                    response = client.request(
                        method,
                        path,
                        content='{"from": "elsewhere"}',
                        headers={"Origin": origin, "Sec-Fetch-Site": "cross-site", **headers},
                    )
                    assert response.status_code == 403, (origin, shape, method, path)
                    assert_problem(response, 403)
        # Streams and reads from there too.
        assert_problem(client.get("/events", headers={"Origin": origin}), 403)
        assert ws_refusal(str(client.base_url), Origin=origin) == 403
        assert_problem(client.get("/messages", headers={"Origin": origin}), 403)
    # The page's own origin, and clients that send no Origin, write.
    own = str(client.base_url).rstrip("/")
    assert send(client, "own page", Origin=own, **{"Sec-Fetch-Site": "same-origin"}).status_code == 202
    assert send(client, "curl").status_code == 202
    assert count_after_drain(client, {}) == 2


def test_cross_site_without_origin_is_refused_for_writes_and_streams(client: httpx.Client) -> None:
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert_problem(client.put("/messages", content="1", headers=cross), 403)
    assert_problem(client.get("/events", headers=cross), 403)
    assert ws_refusal(str(client.base_url), **cross) == 403
    # A link followed from another site still shows the stored messages and the page.
    assert client.get("/messages", headers=cross).status_code == 200
    assert client.get("/", headers=cross).status_code == 200
    assert count_after_drain(client, {}) == 0


def test_two_origin_headers_are_refused(client: httpx.Client) -> None:
    port = port_of(str(client.base_url))
    own = f"http://127.0.0.1:{port}"
    head = f"PUT /messages HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: {own}\nOrigin: {EVIL}\nContent-Length: 1"
    raw_problem(port, head, 400, b"1")


def test_allowed_origins_add_to_the_page_own(pipeline: Pipeline) -> None:
    url = pipeline.start_web(ALLOWED_ORIGINS="https://dashboard.example")
    pipeline.start_worker()
    with httpx.Client(base_url=url, timeout=10) as client:
        assert send(client, 1, Origin="https://dashboard.example").status_code == 202
        assert send(client, 2, Origin=url).status_code == 202
        assert_problem(send(client, 3, Origin="http://dashboard.example"), 403)
        assert_problem(send(client, 4, Origin="https://dashboard.example:8443"), 403)
        assert count_after_drain(client, {}) == 2


# --- hosts (DNS rebinding) --------------------------------------------------------------------

ROUTES = [
    "GET / HTTP/1.1",
    "GET /healthz HTTP/1.1",
    "GET /messages HTTP/1.1",
    "GET /messages?after=0 HTTP/1.1",
    "GET /events?after=0 HTTP/1.1",
    "GET /session HTTP/1.1",
    "GET /static/app.js HTTP/1.1",
    "GET /nowhere HTTP/1.1",
    "OPTIONS * HTTP/1.1",
    "PUT /messages HTTP/1.1\nContent-Length: 1",
    "POST /json_dummy HTTP/1.1\nContent-Length: 1",
    "POST /session HTTP/1.1\nContent-Type: application/json\nContent-Length: 1",
    f"GET /ws?after=0 HTTP/1.1\n{WS_UPGRADE}",
    f"GET /json_dummy_ws HTTP/1.1\n{WS_UPGRADE}",
]


def test_rebinding_host_is_refused_on_every_route(client: httpx.Client) -> None:
    port = port_of(str(client.base_url))
    send(client, "history")
    assert count_after_drain(client, {}) == 1
    for host in (
        f"rebind.evil.example:{port}",
        "rebind.evil.example",
        f"localhost.evil.example:{port}",
        f"127.0.0.2:{port}",
    ):
        for route in ROUTES:
            head = f"{route}\nHost: {host}\nOrigin: http://{host}\nConnection: close"
            document = raw_problem(port, head, 421, b"1" if "Content-Length: 1" in route else b"")
            assert "history" not in json.dumps(document)
    # Missing, malformed or doubled Host: 400.
    for hosts in (
        [],
        [""],
        ["a b"],
        ["user@localhost"],
        ["localhost:99999"],
        ["[::1"],
        ["localhost,evil.example"],
        ["localhost", "localhost"],
        ["localhost", "rebind.evil.example"],
    ):
        for route in ROUTES[2], ROUTES[-2], ROUTES[9]:
            request_line = route.replace("HTTP/1.1", "HTTP/1.0") if not hosts else route
            head = request_line + "".join(f"\nHost: {h}" for h in hosts) + "\nConnection: close"
            status, _, content = raw(port, head, b"1" if "Content-Length: 1" in route else b"")
            assert status == 400, (hosts, route, status, content)
    # Nothing got in.
    assert count_after_drain(client, {}) == 2
    # The loopback names, with any port, are fine.
    for host in (
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "localhost",
        "LOCALHOST.",
        "127.0.0.1:1",
    ):
        status, _, _ = raw(port, f"GET /messages HTTP/1.1\nHost: {host}\nConnection: close")
        assert status == 200, host


def test_any_host_when_listening_beyond_loopback(pipeline: Pipeline) -> None:
    url = pipeline.start_web(HOST="0.0.0.0")
    port = port_of(url)
    for host in ("pipeline.herokuapp.com", f"10.1.2.3:{port}", "example.com"):
        status, _, _ = raw(port, f"GET /messages HTTP/1.1\nHost: {host}\nConnection: close")
        assert status == 200, host
    raw_problem(port, "GET /messages HTTP/1.1\nHost: a b\nConnection: close", 400)
    # The page's own origin is judged by Host: a write from it is fine, one from elsewhere is not.
    head = "PUT /messages HTTP/1.1\nHost: pipeline.herokuapp.com\nContent-Length: 1\nConnection: close"
    assert (
        raw(port, head + "\nOrigin: https://pipeline.herokuapp.com\nX-Forwarded-Proto: https", b"1")[0] == 202
    )
    raw_problem(port, head + "\nOrigin: https://evil.herokuapp.com", 403, b"1")


def test_allowed_hosts_setting(pipeline: Pipeline) -> None:
    url = pipeline.start_web(ALLOWED_HOSTS=".example.com, pipeline.test")
    port = port_of(url)
    for host, status in (
        ("example.com", 200),
        (f"a.example.com:{port}", 200),
        ("a.b.example.com", 200),
        ("pipeline.test", 200),
        ("evil-example.com", 421),
        ("example.com.evil", 421),
        ("sub.pipeline.test", 421),
        ("localhost", 421),  # the setting replaces the loopback default
    ):
        got, _, content = raw(port, f"GET /messages HTTP/1.1\nHost: {host}\nConnection: close")
        assert got == status, (host, content)
    assert ws_refusal(url) == 421  # the client's Host is 127.0.0.1


# --- the Quart app used directly --------------------------------------------------------------


def test_quart_app_used_directly_applies_the_same_checks(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = load_settings(
        {"REDIS_URL": redis_server.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}", "READ_TOKEN": "r"}
    )
    app = create_app(settings)

    async def answers() -> list[int]:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            return [
                (await client.get("/messages", headers={"Host": "rebind.evil.example"})).status_code,
                (await client.get("/messages")).status_code,
                (await client.get("/messages", headers={"Authorization": "Bearer r"})).status_code,
                (await client.put("/messages", data=b"1", headers={"Origin": EVIL})).status_code,
                (await client.get("/session")).status_code,
            ]

    assert asyncio.run(answers()) == [421, 401, 200, 403, 200]
