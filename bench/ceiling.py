"""The stack's own ceiling, served exactly as pipeline/web.py serves the pipeline.

    python -m bench.ceiling bare --port P
        a Quart route that reads the body and answers 202 with a small JSON document
    python -m bench.ceiling enqueue --port P --redis-url URL
        the same route, plus one ``await redis.enqueue_job(...)`` (stock arq, its default
        serializer) on the Redis at URL; nothing consumes the jobs

Both run one hypercorn process on uvloop with the pipeline's own hypercorn settings
(``pipeline.web.hypercorn_config``), so the only difference from the pipeline's ingest is
the work the route does.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from datetime import UTC, datetime

import orjson
import uvloop
from arq import create_pool
from arq.connections import RedisSettings
from hypercorn.asyncio import serve
from quart import Quart, Response, request

from pipeline.config import Settings
from pipeline.web import hypercorn_config


def make_app(kind: str, redis_url: str | None) -> Quart:
    app = Quart(__name__)
    state: dict[str, object] = {}

    if kind == "enqueue":
        assert redis_url

        @app.before_serving
        async def connect() -> None:
            state["redis"] = await create_pool(RedisSettings.from_dsn(redis_url))

        @app.after_serving
        async def disconnect() -> None:
            await state["redis"].aclose()  # type: ignore[attr-defined]

    @app.route("/messages", methods=["PUT", "POST"])
    async def ingest() -> Response:
        body = await request.get_data(cache=False)
        message_id = str(uuid.uuid4())
        received_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if kind == "enqueue":
            await state["redis"].enqueue_job(  # type: ignore[attr-defined]
                "store_message", message_id, body.decode(), received_at, _job_id=message_id
            )
        return Response(
            orjson.dumps({"id": message_id, "status": "queued", "received_at": received_at}),
            status=202,
            content_type="application/json",
        )

    return app


async def main(kind: str, port: int, redis_url: str | None) -> None:
    app = make_app(kind, redis_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    config = hypercorn_config(Settings(host="127.0.0.1", port=port))
    await serve(app, config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare", "enqueue"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    uvloop.run(main(args.kind, args.port, args.redis_url))
