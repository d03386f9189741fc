"""Order (SPEC §3): messages accepted one after another are stored in that order by one worker."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import Pipeline, RedisServer, pipelined, send, wait_stored


def test_accepted_one_after_another_are_stored_in_that_order(
    tmp_path: Path, redis_server: RedisServer, database_url: str
) -> None:
    pipeline = Pipeline(tmp_path / "pipeline", redis_server.url, database_url)
    try:
        _check_order(pipeline)
    finally:
        pipeline.stop()


def _check_order(pipeline: Pipeline) -> None:
    # Two web processes: they must agree on the order (one clock, Redis's), not each use its own.
    webs = [pipeline.start_web(), pipeline.start_web()]
    clients = [httpx.Client(base_url=url, timeout=10) for url in webs]
    try:
        # No worker yet: everything waits in the queue and the worker claims it in large batches,
        # so any two jobs it cannot tell apart (the same score) would come out in random order.
        # Pipelined, a web process accepts several messages within one millisecond.
        ids = pipelined(webs[0], [str(n) for n in range(100)])
        ids += [send(clients[n % 2], n).json()["id"] for n in range(100, 200)]
        ids += pipelined(webs[1], [str(n) for n in range(200, 300)])
        pipeline.start_worker()
        rows = wait_stored(clients[0], 300, timeout_s=30)
        assert [row["payload"] for row in rows] == list(range(300))
        assert [row["id"] for row in rows] == ids

        # And while the worker is running, each message is claimed as it arrives.
        live = [send(clients[n % 2], n).json()["id"] for n in range(300, 500)]
        rows = wait_stored(clients[0], 500, timeout_s=30)
        assert [row["id"] for row in rows[300:]] == live
        seqs = [row["seq"] for row in rows]
        assert seqs == sorted(seqs)
    finally:
        for client in clients:
            client.close()
