"""Operating it (SPEC §11): metrics that add up across processes, load shedding, NDJSON export,
what /healthz adds, and the settings behind them."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from pipeline.config import ConfigError, load_settings
from pipeline.messages import Message, new_id, render, utc_timestamp
from pipeline.metrics import _seconds_between, received_at_s
from tests.support import (
    Pipeline,
    RedisServer,
    RunPy,
    SSEReader,
    free_port,
    parse_metrics,
    wait_stored,
    wait_until,
)


def _scrape(url: str) -> dict[str, float]:
    # A fresh connection each time, so that the kernel may hand it to either web process.
    response = httpx.get(f"{url}/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


@pytest.mark.slow
def test_metrics_add_up_across_web_processes_and_the_worker(tmp_path: Path) -> None:
    run = RunPy(tmp_path / "data", free_port(), WEB_CONCURRENCY="2").start()
    try:
        url = run.url
        with httpx.Client(base_url=url, timeout=10) as client:
            wait_until(lambda: client.get("/healthz").status_code == 200, timeout_s=20)
            sse = SSEReader(client, "/events")
            sse.next_event()  # "retry:" first: the stream is open
            with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5) as ws:
                wait_until(lambda: _scrape(url).get('pipeline_open_streams{transport="ws"}') == 1.0)
                good = [json.dumps({"n": n, "pad": "x" * n}).encode() for n in range(40)]
                bad = [b"", b"{", b"[1,]", b"NaN", b'{"a":1} 2']
                for body in good + bad:
                    # New connections: spread over both web processes.
                    httpx.put(f"{url}/messages", content=body, headers={"Connection": "close"}, timeout=10)
                wait_stored(client, len(good))
                received = 0
                while received < len(good):
                    if json.loads(ws.recv(timeout=10))["event"] == "message":
                        received += 1
                sse.messages(len(good))

                expected = {
                    'pipeline_ingest_requests_total{status="202"}': len(good),
                    'pipeline_ingest_requests_total{status="400"}': len(bad),
                    "pipeline_ingest_request_body_bytes_count": len(good + bad),
                    "pipeline_ingest_request_body_bytes_sum": sum(map(len, good + bad)),
                    "pipeline_ingest_duration_seconds_count": len(good + bad),
                    'pipeline_ingest_duration_seconds_bucket{le="+Inf"}': len(good + bad),
                    "pipeline_messages_stored_total": len(good),
                    "pipeline_store_latency_seconds_count": len(good),
                    'pipeline_deliveries_total{transport="ws"}': len(good),
                    'pipeline_deliveries_total{transport="sse"}': len(good),
                    'pipeline_delivery_latency_seconds_count{transport="ws"}': len(good),
                    'pipeline_open_streams{transport="ws"}': 1,
                    'pipeline_open_streams{transport="sse"}': 1,
                    'pipeline_processes{role="web"}': 2,
                    'pipeline_processes{role="worker"}': 1,
                    "pipeline_messages_failed_total": 0,
                    "pipeline_messages_purged_total": 0,
                    "pipeline_queue_depth": 0,
                    "pipeline_queue_oldest_age_seconds": 0,
                }

                def figures(samples: dict[str, float]) -> dict[str, float | None]:
                    return {name: samples.get(name) for name in expected}

                # Each process reports what it counted once a second (the two web processes
                # independently): wait until every report is in, then every scrape, whichever
                # web process answers it, shows the same whole picture.
                last: list[dict[str, float | None]] = []

                def settled() -> bool:
                    last[:] = [figures(_scrape(url))]
                    return last[0] == expected

                try:
                    wait_until(settled, timeout_s=10, interval_s=0.3)
                except TimeoutError:
                    raise AssertionError(f"metrics never added up: {last}") from None
                for _ in range(5):
                    assert figures(_scrape(url)) == expected
            sse.close()
            wait_until(lambda: _scrape(url).get('pipeline_open_streams{transport="ws"}') == 0.0)
    finally:
        run.stop()


def test_metrics_show_the_queue_and_its_oldest_job(pipeline: Pipeline) -> None:
    url = pipeline.start_web()  # no worker: what is accepted stays queued
    assert httpx.put(f"{url}/messages", content=b"1").status_code == 202
    time.sleep(1.2)
    samples = _scrape(url)
    assert samples["pipeline_queue_depth"] == 1
    assert 1.0 <= samples["pipeline_queue_oldest_age_seconds"] < 30
    assert samples['pipeline_processes{role="worker"}'] == 0


def test_metrics_off(pipeline: Pipeline) -> None:
    url = pipeline.start_web(METRICS="0")
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_shedding_refuses_writes_past_max_queue_depth_and_stores_nothing_it_refused(
    pipeline: Pipeline, redis_server: RedisServer
) -> None:
    url = pipeline.start_web(MAX_QUEUE_DEPTH="3")  # no worker yet: the queue only grows
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for number in range(12):
            response = client.put("/messages", content=json.dumps({"n": number}))
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                refused.append(response)
        # "More than MAX_QUEUE_DEPTH queued" refuses: the fourth fills it past 3.
        assert len(accepted) == 4
        assert len(refused) == 8
        for response in refused:
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) > 0
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["type"] == "/problems/queue-full"
            assert problem["title"] == "Queue full"
        assert client.get("/problems/queue-full").json()["title"] == "Queue full"
        assert redis_server.command("ZCARD", "arq:queue").strip() == b":4"

        pipeline.start_worker()
        rows = wait_stored(client, 4)
        time.sleep(1.5)  # let the cached depth refresh
        assert {row["id"] for row in rows} == set(accepted)
        assert client.put("/messages", content=b"{}").status_code == 202
        assert len(wait_stored(client, 5)) == 5

        # Redis gone is another problem type.
        redis_server.kill()
        response = client.put("/messages", content=b"{}")
        assert response.status_code == 503
        assert response.json()["type"] == "/problems/redis-unavailable"
        scrape = client.get("/metrics")
        assert scrape.status_code == 503 and scrape.json()["type"] == "/problems/redis-unavailable"


def test_ndjson_export_has_the_same_rows_one_per_line(client: httpx.Client) -> None:
    empty = client.get("/messages", headers={"Accept": "application/x-ndjson"})
    assert empty.status_code == 200 and empty.content == b""
    documents = [b'{"a":\n 1.0}', '"line\\nbreak \u2028 raw"'.encode(), b"[1, 2]", b"12345678901234567890"]
    documents += [json.dumps({"n": n}).encode() for n in range(7)]
    for body in documents:
        assert client.put("/messages", content=body).status_code == 202
    wait_stored(client, len(documents))
    for query in ("", "?after=2", "?limit=3", "?tail=4", "?after=1&limit=5"):
        array = client.get(f"/messages{query}")
        lines = client.get(f"/messages{query}", headers={"Accept": "application/x-ndjson"})
        assert lines.status_code == 200
        assert lines.headers["content-type"] == "application/x-ndjson"
        assert lines.content.endswith(b"\n")
        parsed = [json.loads(line) for line in lines.content.split(b"\n")[:-1]]
        assert parsed == array.json(), query
        assert lines.content.count(b"\n") == len(array.json())
    # The payload's own text survives, bar line breaks between tokens.
    first = client.get("/messages?limit=1", headers={"Accept": "application/x-ndjson"}).text
    assert '"payload":{"a":  1.0}' in first
    refused = client.get("/messages", headers={"Accept": "application/x-ndjson;q=0, application/json"})
    assert refused.headers["content-type"] == "application/json"


def test_healthz_reports_the_oldest_queued_job_and_the_retention(pipeline: Pipeline) -> None:
    url = pipeline.start_web(RETENTION_MAX_MESSAGES="1000", RETENTION_MAX_AGE="90m")
    report = httpx.get(f"{url}/healthz").json()
    assert report["queue"]["oldest_age_s"] is None
    assert report["retention"] == {"max_messages": 1000, "max_age_s": 5400.0}
    assert httpx.put(f"{url}/messages", content=b"{}").status_code == 202
    time.sleep(1.1)
    report = httpx.get(f"{url}/healthz").json()  # 503: no worker, but the report is whole
    assert report["queue"]["queued"] == 1
    assert 1.0 <= report["queue"]["oldest_age_s"] < 30


@pytest.mark.parametrize(
    ("raw", "seconds"), [("45s", 45.0), ("90m", 5400.0), ("12h", 43200.0), ("30d", 2592000.0), ("2H", 7200.0)]
)
def test_retention_max_age_units(raw: str, seconds: float) -> None:
    assert load_settings({"RETENTION_MAX_AGE": raw}).retention_max_age_s == seconds


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("RETENTION_MAX_AGE", "90"),
        ("RETENTION_MAX_AGE", "1.5h"),
        ("RETENTION_MAX_AGE", "0d"),
        ("RETENTION_MAX_AGE", "-3m"),
        ("RETENTION_MAX_AGE", "3w"),
        ("RETENTION_MAX_AGE", "\u0663m"),
        ("RETENTION_MAX_MESSAGES", "0"),
        ("RETENTION_MAX_MESSAGES", "many"),
        ("MAX_QUEUE_DEPTH", "0"),
        ("METRICS", "maybe"),
    ],
)
def test_bad_settings_stop_with_one_line(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({name: raw})
    message = str(error.value)
    assert message.startswith(f"{name}:") and "\n" not in message


def test_delivery_latency_reads_received_at_from_the_rendered_message() -> None:
    message = Message(new_id(), 7, '{"received_at": "x"}', "2026-11-27T20:39:01.123456Z", utc_timestamp())
    assert received_at_s(render(message)) == datetime(2026, 11, 27, 20, 39, 1, 123456, UTC).timestamp()
    assert _seconds_between("2026-11-27T23:59:59.500000Z", "2026-11-28T00:00:00.250000Z") == 0.75
    assert (
        abs(_seconds_between("2026-11-27T20:39:01.123456Z", "2026-11-27T20:40:02.000000Z") - 60.876544) < 1e-6
    )


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.max_queue_depth == 100_000
    assert settings.retention_max_messages is None and settings.retention_max_age_s is None
    assert settings.metrics_enabled is True


@pytest.mark.slow
def test_a_stream_closed_as_too_slow_is_counted(service: tuple[Pipeline, httpx.Client]) -> None:
    _, client = service
    url = str(client.base_url).rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    stalled = socket.socket()  # a WebSocket client that stops reading, with a tiny receive buffer
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    stalled.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        wait_until(lambda: _scrape(url).get('pipeline_open_streams{transport="ws"}') == 1.0)
        padding = "x" * 20_000
        for number in range(300):
            assert (
                client.put("/messages", content=json.dumps({"n": number, "pad": padding})).status_code == 202
            )
            time.sleep(0.01)
        # Reading again lets the stuck write finish; the stream then finds its buffer overflowed.
        stalled.settimeout(20)
        while stalled.recv(1 << 20):
            pass
        samples = wait_until(
            lambda: (
                (s := _scrape(url)).get('pipeline_streams_closed_slow_total{transport="ws"}') == 1.0 and s
            ),
            timeout_s=30,
            interval_s=0.5,
        )
        assert samples['pipeline_streams_closed_slow_total{transport="sse"}'] == 0
        wait_until(lambda: _scrape(url).get('pipeline_open_streams{transport="ws"}') == 0.0, timeout_s=30)
    finally:
        stalled.close()
