"""The ingest shortcut in front of Quart answers exactly as Quart's own route does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from pipeline.app import create_app
from pipeline.config import load_settings
from tests.support import Pipeline, RedisServer

CASES = {
    "valid": (b'{"a": 1.0}', {}),
    "malformed": (b'{"a": ', {}),
    "too deep": (b"[" * 2000 + b"]" * 2000, {}),
    "too large": (b'"' + b"x" * 2000 + b'"', {}),
    "no token": (b"1", {"Authorization": ""}),
    "bad idempotency key": (b"1", {"Idempotency-Key": "x" * 300}),
    "idempotent": (b"2", {"Idempotency-Key": "same"}),
}
ENV = {"MAX_BODY_BYTES": "1000", "INGEST_TOKEN": "t"}


def _comparable(status: int, headers: dict[str, str], body: bytes) -> tuple[object, ...]:
    document = json.loads(body)
    if status == 202:
        return status, headers["content-type"], sorted(document), headers["location"].startswith("/messages/")
    return (
        status,
        headers["content-type"],
        document["title"],
        document["detail"],
        headers.get("www-authenticate"),
    )


def test_shortcut_and_quart_route_answer_alike(
    pipeline: Pipeline, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = pipeline.start_web(**ENV)
    through_shortcut = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for name, (body, headers) in CASES.items():
            response = client.put("/messages", content=body, headers={"Authorization": "Bearer t", **headers})
            through_shortcut[name] = _comparable(
                response.status_code, dict(response.headers), response.content
            )

    settings = load_settings(
        {"REDIS_URL": redis_server.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}", **ENV}
    )
    app = create_app(settings)

    async def through_quart() -> dict[str, tuple[object, ...]]:
        answers = {}
        async with app.test_app() as test_app:
            client = test_app.test_client()
            for name, (body, headers) in CASES.items():
                response = await client.put(
                    "/messages", data=body, headers={"Authorization": "Bearer t", **headers}
                )
                answers[name] = _comparable(
                    response.status_code,
                    {k.lower(): v for k, v in response.headers.items()},
                    await response.get_data(),
                )
        return answers

    assert asyncio.run(through_quart()) == through_shortcut
    assert through_shortcut["valid"][0] == 202 and through_shortcut["too large"][0] == 413
