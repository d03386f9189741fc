"""Fixtures: each test gets real, private parts and they are stopped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from tests.support import Pipeline, RedisServer

# Where to find a Postgres for the tests that need one; they make (and drop) their own database.
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _postgres_reason() -> str | None:
    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return f"no PostgreSQL at {POSTGRES_URL} ({str(exc).strip()}); set TEST_POSTGRES_URL"
    return None


@pytest.fixture(scope="session")
def postgres_database() -> Callable[[], str]:
    """A factory of throwaway Postgres databases (dropped at the end of the session)."""
    reason = _postgres_reason()
    made: list[str] = []

    def make() -> str:
        if reason is not None:
            # CI sets REQUIRE_POSTGRES=1: there a missing Postgres is a failure, not a skip.
            if os.environ.get("REQUIRE_POSTGRES") == "1":
                pytest.fail(f"{reason}, and REQUIRE_POSTGRES=1")
            pytest.skip(reason)
        name = f"pipeline_test_{uuid.uuid4().hex[:12]}"
        connection = psycopg2.connect(POSTGRES_URL)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        made.append(name)
        base, _, _ = POSTGRES_URL.rpartition("/")
        return f"{base}/{name}"

    yield make
    if made:
        connection = psycopg2.connect(POSTGRES_URL)
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in made:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Callable[[], str]) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pipeline.db'}"
    return postgres_database()


@pytest.fixture
def pipeline(tmp_path: Path, redis_server: RedisServer) -> Iterator[Pipeline]:
    """Processes not yet started, on a private Redis and a fresh SQLite file."""
    processes = Pipeline(tmp_path / "pipeline", redis_server.url, f"sqlite:///{tmp_path / 'pipeline.db'}")
    yield processes
    processes.stop()


@pytest.fixture
def service(pipeline: Pipeline) -> Iterator[tuple[Pipeline, httpx.Client]]:
    """One web and one worker, healthy, and an HTTP client for the web."""
    url = pipeline.start_web()
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        yield pipeline, client


@pytest.fixture
def client(service: tuple[Pipeline, httpx.Client]) -> httpx.Client:
    return service[1]
