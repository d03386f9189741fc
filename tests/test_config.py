"""Settings from the environment: defaults, and one clear line for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, child_environ, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port, settings.redis_url) == ("127.0.0.1", 3579, None)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.database_url == f"sqlite:///{(Path('data') / 'pipeline.db').resolve()}"
    assert settings.ingest_tokens == () and settings.allowed_origins is None
    assert settings.read_tokens == () and settings.allowed_hosts is None


def test_values_are_read() -> None:
    settings = load_settings(
        {
            "PORT": "8080",
            "REDIS_URL": "rediss://:pw@redis.example:6380/0",
            "DATABASE_URL": "postgres://u:p@db.example:5432/app",
            "ALLOWED_ORIGINS": "https://A.example, https://b.example/",
            "INGEST_TOKEN": "t",
            "READ_TOKEN": " r1 , r2,r1 ",
            "ALLOWED_HOSTS": "App.example, .herokuapp.com, [::1]",
            "DATA_DIR": "/tmp/x",
        }
    )
    assert settings.port == 8080 and settings.redis_url == "rediss://:pw@redis.example:6380/0"
    assert settings.database_url == "postgres://u:p@db.example:5432/app"
    assert settings.allowed_origins == frozenset({"https://a.example", "https://b.example"})
    assert settings.ingest_tokens == ("t",) and settings.read_tokens == ("r1", "r2")
    assert settings.allowed_hosts == frozenset({"app.example", ".herokuapp.com", "[::1]"})
    assert load_settings(child_environ(settings, {})) == settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("MAX_BODY_BYTES", "0"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "redis://host:notaport"),
        ("DATABASE_URL", "sqlite://"),
        ("DATABASE_URL", "postgres://host/"),
        ("DATABASE_URL", "oracle://x/y"),
        ("ALLOWED_ORIGINS", "example.com"),
        ("PING_INTERVAL_S", "nan"),
        ("READ_TOKEN", " , "),
        ("READ_TOKEN", "has space"),
        ("INGEST_TOKEN", "tab\tinside"),
        ("INGEST_TOKEN", "caf\u00e9"),
        ("ALLOWED_HOSTS", "example.com:8080"),
        ("ALLOWED_HOSTS", "https://example.com"),
        ("ALLOWED_HOSTS", ","),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({name: value})
    message = str(error.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
