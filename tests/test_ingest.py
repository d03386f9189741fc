"""Ingest's one implementation (``ingest.serve_ingest``, served in front of Quart) answers alike
on every path and method the route table (``front.ROUTES``) gives it, over real HTTP."""

from __future__ import annotations

import json

import httpx

from pipeline.front import ROUTES
from pipeline.ingest import serve_ingest
from tests.support import Pipeline

INGEST = next(route for route in ROUTES if route.handler is serve_ingest)
# SPEC §3's ingest paths, and whatever else the table sends to ingest.
PATHS = sorted({"/messages", "/json_dummy", "/json_dummy/", *INGEST.paths})
ENV = {"MAX_BODY_BYTES": "3000", "INGEST_TOKEN": "t"}
# name: (body, extra headers, status, a header the answer must carry or None)
CASES: dict[str, tuple[bytes, dict[str, str], int, str | None]] = {
    "valid": (b'{"a": 1.0}', {}, 202, "location"),
    "malformed": (b'{"a": ', {}, 400, None),
    "too deep": (b"[" * 1100 + b"]" * 1100, {}, 400, None),
    "too large": (b'"' + b"x" * 3000 + b'"', {}, 413, None),
    "no token": (b"1", {"Authorization": ""}, 401, "www-authenticate"),
    "bad idempotency key": (b"1", {"Idempotency-Key": "x" * 300}, 400, None),
}


def test_every_ingest_route_answers_every_case(pipeline: Pipeline) -> None:
    url = pipeline.start_web(**ENV)
    assert INGEST.scope == "http" and set(INGEST.methods) == {"POST", "PUT"}
    with httpx.Client(base_url=url, timeout=10) as client:
        for path in PATHS:
            for method in INGEST.methods:
                for name, (body, headers, status, header) in CASES.items():
                    # A connection each: a refused body may be left unread, and the server close
                    # the connection, while the next request is on its way (not what this tests).
                    response = client.request(
                        method,
                        path,
                        content=body,
                        headers={"Authorization": "Bearer t", "Connection": "close", **headers},
                    )
                    where = f"{method} {path} ({name}): {response.status_code} {response.text[:200]}"
                    assert response.status_code == status, where
                    assert response.headers["x-content-type-options"] == "nosniff", where
                    if header is not None:
                        assert response.headers.get(header), where
                    if status == 202:
                        assert response.headers["content-type"] == "application/json", where
                        document = response.json()
                        assert sorted(document) == ["id", "received_at", "status"], where
                        assert response.headers["location"] == f"/messages/{document['id']}", where
                    else:
                        assert response.headers["content-type"] == "application/problem+json", where
                        problem = json.loads(response.content)
                        assert problem["status"] == status and problem["detail"], where


def test_the_same_idempotency_key_gets_the_same_id_on_every_ingest_route(pipeline: Pipeline) -> None:
    url = pipeline.start_web()
    with httpx.Client(base_url=url, timeout=10) as client:
        ids = {
            client.request(method, path, content=b"2", headers={"Idempotency-Key": "same"}).json()["id"]
            for path in PATHS
            for method in INGEST.methods
        }
    assert len(ids) == 1
