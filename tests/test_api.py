"""The HTTP API (SPEC §3) over real HTTP, against a web and a worker process."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import uuid

import httpx
import pytest

from tests.support import Pipeline, RedisServer, send, stored, wait_stored, wait_until

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    return problem


def test_put_is_acknowledged_then_stored_with_the_exact_text(client: httpx.Client) -> None:
    body = '{"b": 1.0, "a": [1, 2.50, -0], "big": 123456789012345678901234567890, "s": "é\\u00e9"}'
    response = client.put("/messages", content=body)
    assert response.status_code == 202
    ack = response.json()
    assert set(ack) == {"id", "status", "received_at"}
    assert ack["status"] == "queued"
    assert str(uuid.UUID(ack["id"])) == ack["id"]
    assert TIMESTAMP.match(ack["received_at"])
    assert response.headers["location"] == f"/messages/{ack['id']}"

    one = wait_until(lambda: (r := client.get(response.headers["location"])).status_code == 200 and r)
    assert f'"payload":{body},' in one.text  # spliced in as sent: 1.0, 2.50, -0, all digits, key order
    message = one.json()
    assert list(message) == ["id", "seq", "channel", "payload", "received_at", "persisted_at"]
    assert message["channel"] == "default"
    assert message["id"] == ack["id"] and message["received_at"] == ack["received_at"]
    assert isinstance(message["seq"], int) and message["seq"] >= 1
    assert TIMESTAMP.match(message["persisted_at"]) and message["persisted_at"] >= message["received_at"]
    assert stored(client) == [message]


def test_post_works_and_content_type_is_ignored(client: httpx.Client) -> None:
    form = client.post(
        "/messages",
        content='{"via": "curl -d"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    plain = client.post("/messages", content="[1, 2, 3]", headers={"content-type": "text/plain"})
    assert form.status_code == plain.status_code == 202
    rows = wait_stored(client, 2)
    assert [row["payload"] for row in rows] == [{"via": "curl -d"}, [1, 2, 3]]


@pytest.mark.parametrize(
    "document", ['"just a string"', "42", "-1.5e300", "null", "true", "[]", "{}", "1e400"]
)
def test_any_json_value_is_accepted(client: httpx.Client, document: str) -> None:
    response = client.put("/messages", content=f"  {document}\n")
    assert response.status_code == 202, response.text
    one = wait_until(lambda: (r := client.get(f"/messages/{response.json()['id']}")).status_code == 200 and r)
    assert f'"payload":{document},' in one.text


BAD_BODIES = {
    "empty": b"",
    "only whitespace": b"  \n\t ",
    "malformed": b'{"a": }',
    "unterminated": b'{"a": 1',
    "single quotes": b"{'a': 1}",
    "trailing garbage": b'{"a": 1} trailing',
    "two documents": b"{} {}",
    "invalid utf-8": b'{"a": "\xff\xfe"}',
    "NaN": b'{"a": NaN}',
    "Infinity": b"[Infinity]",
    "-Infinity": b"-Infinity",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "control character in string": b'"a\x01b"',
    "lone surrogate": b'"\\ud800"',
    "byte order mark": b'\xef\xbb\xbf{"a": 1}',
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_bodies_are_400_and_store_nothing(client: httpx.Client, name: str) -> None:
    problem = assert_problem(client.put("/messages", content=BAD_BODIES[name]), 400)
    assert len(str(problem["detail"])) < 500
    # Nothing was queued: a good message sent afterwards is the only one stored.
    assert send(client, {"after": name}).status_code == 202
    rows = wait_stored(client, 1)
    assert [row["payload"] for row in rows] == [{"after": name}]
    assert client.get("/healthz").json()["queue"] == {"queued": 0, "failed": 0, "oldest_age_s": None}


def test_body_over_the_limit_is_413(pipeline: Pipeline) -> None:
    url = pipeline.start_web(MAX_BODY_BYTES="1000")
    pipeline.start_worker()
    with httpx.Client(base_url=url, timeout=10) as client:
        exactly = '"' + "x" * 998 + '"'
        assert client.put("/messages", content=exactly).status_code == 202
        problem = assert_problem(client.put("/messages", content='"' + "x" * 1000 + '"'), 413)
        assert "1000" in str(problem["detail"])

        # Without Content-Length (chunked), the limit holds too. The server answers as soon as
        # the limit is crossed and closes, so read the answer over a raw socket.
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PUT /messages HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
            with contextlib.suppress(OSError):
                for chunk in [b'"'] + [b"x" * 100] * 100 + [b'"']:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sock.sendall(b"0\r\n\r\n")
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413") and b"application/problem+json" in answer
        rows = wait_stored(client, 1)
        assert [row["payload"] for row in rows] == ["x" * 998]


@pytest.mark.parametrize("method", ["DELETE", "PATCH"])
def test_other_methods_are_405(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/messages")
    assert_problem(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST", "PUT"}


def test_unknown_route_and_ids_are_404(client: httpx.Client) -> None:
    assert_problem(client.get("/nope"), 404)
    assert_problem(client.get(f"/messages/{uuid.uuid4()}"), 404)
    assert_problem(client.get("/messages/not-a-uuid"), 404)
    assert_problem(client.get("/messages/" + "9" * 5000), 404)


def test_accepted_but_not_stored_yet_is_202(pipeline: Pipeline) -> None:
    url = pipeline.start_web()  # no worker: the job waits in the queue
    with httpx.Client(base_url=url, timeout=10) as client:
        ack = send(client, {"waiting": True}).json()
        response = client.get(f"/messages/{ack['id']}")
        assert response.status_code == 202
        assert response.json() == {"id": ack["id"], "status": "queued"}
        assert stored(client) == []
        pipeline.start_worker()
        one = wait_until(lambda: (r := client.get(f"/messages/{ack['id']}")).status_code == 200 and r)
        assert one.json()["payload"] == {"waiting": True}


def test_uuid_ids_are_accepted_in_any_case(client: httpx.Client) -> None:
    ack = send(client, 1).json()
    wait_stored(client, 1)
    assert client.get(f"/messages/{ack['id'].upper()}").json()["id"] == ack["id"]


def test_seed_routes_keep_working(client: httpx.Client) -> None:
    first = client.put("/json_dummy/", content='{"seed": 1}')
    second = client.post("/json_dummy", content='{"seed": 2}')
    assert first.status_code == second.status_code == 202
    wait_stored(client, 2)
    listing = client.get("/json_dummy/")
    assert [row["payload"] for row in listing.json()] == [{"seed": 1}, {"seed": 2}]
    assert client.get("/json_dummy").json() == listing.json()
    one = client.get(f"/json_dummy/{first.json()['id']}")
    assert one.status_code == 200 and one.json()["payload"] == {"seed": 1}
    assert_problem(client.put("/json_dummy/", content="nope"), 400)


def test_listing_pages_with_after_limit_and_tail(client: httpx.Client) -> None:
    for number in range(25):
        assert send(client, number).status_code == 202
    rows = wait_stored(client, 25)
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 25
    assert [row["payload"] for row in rows] == list(range(25))

    page = client.get("/messages", params={"after": seqs[9], "limit": 5}).json()
    assert [row["seq"] for row in page] == seqs[10:15]
    assert client.get("/messages", params={"after": seqs[-1]}).json() == []
    assert [row["seq"] for row in client.get("/messages", params={"tail": 3}).json()] == seqs[-3:]
    assert client.get("/messages", params={"limit": 0}).json() == []
    for bad in ({"after": "x"}, {"after": "-1"}, {"limit": "1.5"}, {"tail": "-2"}):
        assert_problem(client.get("/messages", params=bad), 400)


def test_ingest_token(pipeline: Pipeline) -> None:
    url = pipeline.start_web(INGEST_TOKEN="s3cret, n3xt")
    pipeline.start_worker()
    with httpx.Client(base_url=url, timeout=10) as client:
        missing = client.put("/messages", content="1")
        assert_problem(missing, 401)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert_problem(client.put("/messages", content="1", headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(client.put("/messages", content="1", headers={"Authorization": "Basic s3cret"}), 401)
        ok = client.put("/messages", content="2", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202
        # A list: either token writes (rotation).
        rotated = client.put("/messages", content="3", headers={"Authorization": "Bearer n3xt"})
        assert rotated.status_code == 202
        assert [row["payload"] for row in wait_stored(client, 2)] == [2, 3]
        assert client.get("/messages").status_code == 200  # reads stay open


def test_redis_down_is_503_and_nothing_half_written(
    service: tuple[Pipeline, httpx.Client], redis_server: RedisServer
) -> None:
    _, client = service
    assert send(client, "before").status_code == 202
    wait_stored(client, 1)
    redis_server.stop()
    down = client.put("/messages", content='"during"')
    assert_problem(down, 503)
    assert int(down.headers["retry-after"]) <= 5
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["redis"]["ok"] is False
    redis_server.start()
    wait_until(lambda: client.put("/messages", content='"after"').status_code == 202, timeout_s=15)
    rows = wait_stored(client, 2)
    assert [row["payload"] for row in rows] == ["before", "after"]


def test_redis_not_answering_is_503_within_seconds(
    service: tuple[Pipeline, httpx.Client], redis_server: RedisServer
) -> None:
    _, client = service
    # One message first, so what is in flight when Redis stops is the job's own script (the web
    # process checks Redis's clock now and then; that check must not be what the pause catches).
    first = send(client, "before").json()["id"]
    wait_stored(client, 1)
    redis_server.pause()
    try:
        response = client.put("/messages", content='"while paused"', timeout=10)
        assert_problem(response, 503)
        assert response.elapsed.total_seconds() < 5
    finally:
        redis_server.resume()
    # The paused Redis ran the queued script when it resumed; past its deadline, it wrote nothing.
    # Anything it had queued then would be stored before this later message (SPEC §3, order).
    resumed = send(client, "resumed").json()["id"]
    wait_until(lambda: client.get(f"/messages/{resumed}").status_code == 200, timeout_s=15)
    assert [row["id"] for row in stored(client)] == [first, resumed]


def test_idempotency_key(client: httpx.Client) -> None:
    first = send(client, {"order": 1}, **{"Idempotency-Key": "order-1"})
    again = send(client, {"order": 1}, **{"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    conflict = send(client, {"order": 2}, **{"Idempotency-Key": "order-1"})
    assert_problem(conflict, 422)
    other = send(client, {"order": 1}, **{"Idempotency-Key": "order-2"})
    assert other.json()["id"] != first.json()["id"]
    assert_problem(send(client, 1, **{"Idempotency-Key": "k" * 256}), 400)
    rows = wait_stored(client, 2)
    assert [row["id"] for row in rows] == [first.json()["id"], other.json()["id"]]


def test_healthz_names_its_dependencies(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "ok"
    assert report["redis"]["ok"] and report["database"]["ok"] and report["worker"]["ok"]


def test_healthz_without_a_worker_is_503(pipeline: Pipeline) -> None:
    url = pipeline.start_web()
    response = httpx.get(f"{url}/healthz")
    assert response.status_code == 503
    assert response.json()["worker"] == {"ok": False}


def test_responses_are_json_documents(client: httpx.Client) -> None:
    ack = send(client, {"x": "<script>"})
    assert ack.headers["content-type"] == "application/json"
    wait_stored(client, 1)
    listing = client.get("/messages")
    assert listing.headers["content-type"] == "application/json"
    assert json.loads(listing.text)[0]["payload"] == {"x": "<script>"}


def test_idempotency_key_holds_across_web_processes(pipeline: Pipeline) -> None:
    webs = [pipeline.start_web(), pipeline.start_web()]
    pipeline.start_worker()
    answers = []
    for url in webs * 2:
        with httpx.Client(base_url=url, timeout=10) as client:
            answers.append(send(client, {"pay": 10}, **{"Idempotency-Key": "invoice-7"}))
    assert {response.status_code for response in answers} == {202}
    assert len({response.json()["id"] for response in answers}) == 1
    with httpx.Client(base_url=webs[1], timeout=10) as client:
        assert_problem(send(client, {"pay": 11}, **{"Idempotency-Key": "invoice-7"}), 422)
        assert [row["id"] for row in wait_stored(client, 1)] == [answers[0].json()["id"]]
