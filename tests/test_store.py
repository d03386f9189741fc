"""The database layer on SQLite and (where reachable) Postgres: idempotent saves, ordered reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import psycopg2
import pytest

from pipeline.messages import new_id
from pipeline.store import Store


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def rows(count: int, channel: str = "default") -> list[tuple[str, str, str, str]]:
    return [(new_id(), f'{{"n": {n}}}', "2026-11-27T20:39:01.123456Z", channel) for n in range(count)]


def test_save_assigns_increasing_seqs_and_is_idempotent(database_url: str) -> None:
    async def scenario() -> None:
        store = Store(database_url)
        try:
            await store.create_tables()
            await store.create_tables()  # release runs again: nothing happens
            batch = rows(3)
            first = await store.save(batch)
            assert [m.id for m in first] == [r[0] for r in batch]
            assert [m.seq for m in first] == sorted(m.seq for m in first)
            assert [m.payload for m in first] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
            again = await store.save(batch[1:] + rows(1))  # a job that runs twice
            assert again[:2] == first[1:]
            assert again[2].seq > first[2].seq
            assert await store.count() == 4
            assert await store.latest_seq() == again[2].seq
            assert await store.get(first[0].id) == first[0]
            assert await store.get(str(uuid.uuid4())) is None
            assert [m.seq for m in await store.after(first[0].seq, 10)] == [
                first[1].seq,
                first[2].seq,
                again[2].seq,
            ]
            assert [m.seq for m in await store.after(0, 2)] == [first[0].seq, first[1].seq]
            assert [m.seq for m in await store.after(0, 10, until=first[1].seq)] == [
                first[0].seq,
                first[1].seq,
            ]
            assert await store.tail_after(2) == first[2].seq - 1
            assert await store.tail_after(2, until=again[2].seq, channels={"default"}) == first[2].seq - 1
            assert await store.tail_after(10, after=first[0].seq) == first[0].seq
        finally:
            await store.close()

    run(scenario())


def test_concurrent_writers_commit_in_seq_order(database_url: str) -> None:
    """Two stores (as two workers) writing at once: seq never goes backwards for a reader."""

    async def scenario() -> None:
        writers = [Store(database_url, threads=1) for _ in range(2)]
        reader = Store(database_url)
        try:
            await writers[0].create_tables()
            seen: list[int] = []
            done = False

            async def write(store: Store) -> None:
                for _ in range(40):
                    await store.save(rows(5))

            async def read() -> None:
                last = 0
                while not done:
                    for message in await reader.after(last, 1000):
                        seen.append(message.seq)
                        last = message.seq
                    await asyncio.sleep(0)

            reading = asyncio.create_task(read())
            await asyncio.gather(*(write(store) for store in writers))
            done = True
            await reading
            everything = [m.seq for m in await reader.after(0, 10_000)]
            # Reading "after the last seq seen" found every row: none committed behind a reader.
            assert len(everything) == 400
            assert seen == everything[: len(seen)]
            assert everything == sorted(set(everything))
        finally:
            for store in [*writers, reader]:
                await store.close()

    run(scenario())


@pytest.mark.postgres
def test_a_writer_held_up_after_taking_its_seqs_holds_up_the_others(
    postgres_database: Callable[[], str],
) -> None:
    """Postgres hands out ``seq`` when a row is inserted, not when it commits. A writer held up
    between the two (here: waiting on another transaction that inserted one of its ids) must keep
    every other writer waiting, or a reader would see a larger ``seq`` first and skip the smaller."""
    url = postgres_database()

    async def scenario() -> None:
        first, second, reader = Store(url, threads=1), Store(url, threads=1), Store(url)
        blocker = psycopg2.connect(url)
        try:
            await first.create_tables()
            held = new_id()
            with blocker.cursor() as cursor:  # uncommitted: an insert of the same id waits for it
                cursor.execute(
                    "INSERT INTO message (id, payload, received_at, persisted_at) VALUES (%s, '0', %s, %s)",
                    (held, "2026-11-27T20:39:01.123456Z", "2026-11-27T20:39:01.123456Z"),
                )
            slow = asyncio.create_task(first.save([*rows(2), (held, "1", "2026-11-27T20:39:01.123456Z")]))
            await asyncio.sleep(0.5)  # it has taken its seqs and waits
            fast = asyncio.create_task(second.save(rows(1)))
            await asyncio.sleep(0.5)
            visible = [m.seq for m in await reader.after(0, 100)]
            blocker.rollback()
            await asyncio.gather(slow, fast)
            everything = [m.seq for m in await reader.after(0, 100)]
            assert len(everything) == 4
            # Whatever a reader saw first, nothing with a smaller seq appeared after it.
            assert everything[: len(visible)] == visible
        finally:
            blocker.close()
            for store in (first, second, reader):
                await store.close()

    run(scenario())
