"""Settings from the environment (12-factor); the only module that reads ``os.environ``.

A bad value raises :class:`ConfigError` with one line naming the variable, which the
entry points print before exiting, so a misconfigured process stops at start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = 3579
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to know about its surroundings."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # None means "no shared Redis": run.py then starts a private one and fills this in.
    redis_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path("data"))
    database_url: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Bearer tokens that may write; empty means writes are open (comma-separated in INGEST_TOKEN).
    ingest_tokens: tuple[str, ...] = ()
    # None means "the page's own host only"; "*" in the set allows any origin.
    allowed_origins: frozenset[str] | None = None
    ping_interval_s: float = 15.0
    # How many web processes run.py starts on the one port (Heroku's name for it).
    web_concurrency: int = 1
    # Worker tuning: concurrent jobs per worker process, and how a failing store retries.
    worker_max_jobs: int = 200
    store_max_tries: int = 12
    store_retry_base_s: float = 0.25
    # Writes are refused (503, queue full) past this many queued or running jobs.
    max_queue_depth: int = 100_000
    # Retention (SPEC §10): newest N per channel / at most this old; None keeps everything.
    retention_max_messages: int | None = None
    retention_max_age_s: float | None = None
    # METRICS=0 turns off /metrics and its counters (the benchmark measures their cost).
    metrics_enabled: bool = True
    # Bearer tokens that may read (and sign in to the page); empty means reads are open.
    read_tokens: tuple[str, ...] = ()
    # None means "by HOST": only loopback names when listening on loopback, else any; "*" any.
    allowed_hosts: frozenset[str] | None = None
    # Bounds under attack (SPEC §8): streams open at once, request-body bytes read at once.
    max_streams: int = 10_000
    max_bodies_in_flight_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.database_url:
            sqlite_path = (self.data_dir / "pipeline.db").resolve()
            object.__setattr__(self, "database_url", f"sqlite:///{sqlite_path}")

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (run.py flags, tests)."""
        return replace(self, **changes)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    data_dir = Path(get("DATA_DIR") or "data")
    return Settings(
        host=get("HOST") or "127.0.0.1",
        port=_int("PORT", get("PORT"), DEFAULT_PORT, low=1, high=65535),
        redis_url=_redis_url(get("REDIS_URL")),
        data_dir=data_dir,
        database_url=_database_url(get("DATABASE_URL")),
        max_body_bytes=_int("MAX_BODY_BYTES", get("MAX_BODY_BYTES"), DEFAULT_MAX_BODY_BYTES, low=1),
        ingest_tokens=_tokens("INGEST_TOKEN", get("INGEST_TOKEN")),
        allowed_origins=_origins(get("ALLOWED_ORIGINS")),
        ping_interval_s=_float("PING_INTERVAL_S", get("PING_INTERVAL_S"), 15.0, low=0.05),
        web_concurrency=_int("WEB_CONCURRENCY", get("WEB_CONCURRENCY"), 1, low=1, high=64),
        worker_max_jobs=_int("WORKER_MAX_JOBS", get("WORKER_MAX_JOBS"), 200, low=1, high=10_000),
        store_max_tries=_int("STORE_MAX_TRIES", get("STORE_MAX_TRIES"), 12, low=1, high=1000),
        store_retry_base_s=_float("STORE_RETRY_BASE_S", get("STORE_RETRY_BASE_S"), 0.25, low=0.0),
        max_queue_depth=_int("MAX_QUEUE_DEPTH", get("MAX_QUEUE_DEPTH"), 100_000, low=1),
        retention_max_messages=_optional_int("RETENTION_MAX_MESSAGES", get("RETENTION_MAX_MESSAGES")),
        retention_max_age_s=_duration("RETENTION_MAX_AGE", get("RETENTION_MAX_AGE")),
        metrics_enabled=_flag("METRICS", get("METRICS"), True),
        read_tokens=_tokens("READ_TOKEN", get("READ_TOKEN")),
        allowed_hosts=_hosts(get("ALLOWED_HOSTS")),
        max_streams=_int("MAX_STREAMS", get("MAX_STREAMS"), 10_000, low=1),
        max_bodies_in_flight_bytes=_int(
            "MAX_BODIES_IN_FLIGHT_BYTES", get("MAX_BODIES_IN_FLIGHT_BYTES"), 32 * 1024 * 1024, low=1
        ),
    )


def _int(name: str, raw: str | None, default: int, *, low: int, high: int | None = None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}: must be {bound}, got {value}")
    return value


def _float(name: str, raw: str | None, default: float, *, low: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value >= low:  # also rejects NaN
        raise ConfigError(f"{name}: must be at least {low}, got {raw!r}")
    return value


def _optional_int(name: str, raw: str | None) -> int | None:
    return None if raw is None else _int(name, raw, 0, low=1)


_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(name: str, raw: str | None) -> float | None:
    """``90m``, ``12h``, ``30d`` (units s, m, h, d) in seconds; None when unset."""
    if raw is None:
        return None
    number, unit = raw[:-1], raw[-1:].lower()
    if unit not in _DURATION_UNITS_S or not number.isascii() or not number.isdigit():
        raise ConfigError(
            f"{name}: expected a whole number with a unit s, m, h or d (like 90m, 30d), got {raw!r}"
        )
    if int(number) < 1:
        raise ConfigError(f"{name}: must be at least 1{unit}, got {raw!r}")
    return float(int(number) * _DURATION_UNITS_S[unit])


def _flag(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 1 or 0 (true/false), got {raw!r}")


def _redis_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL: expected redis://, rediss:// or unix://, got {raw!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"REDIS_URL: a unix:// URL needs a socket path, got {raw!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"REDIS_URL: no host in {raw!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"REDIS_URL: malformed port in {raw!r}") from None
    return raw


def _database_url(raw: str | None) -> str:
    if raw is None:
        return ""
    parts = urlsplit(raw)
    if parts.scheme == "sqlite":
        if not parts.path or parts.path == "/":
            raise ConfigError(f"DATABASE_URL: a sqlite:/// URL needs a file path, got {raw!r}")
        return raw
    if parts.scheme in ("postgres", "postgresql"):
        if not parts.path.strip("/"):
            raise ConfigError(f"DATABASE_URL: no database name in {raw!r}")
        try:
            parts.port  # noqa: B018
        except ValueError:
            raise ConfigError(f"DATABASE_URL: malformed port in {raw!r}") from None
        return raw
    raise ConfigError(f"DATABASE_URL: expected sqlite:///path or postgres://..., got {raw!r}")


def _origins(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    origins = set()
    for item in raw.split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        if origin != "*":
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ConfigError(
                    f"ALLOWED_ORIGINS: expected comma-separated origins like "
                    f"https://example.com, got {item.strip()!r}"
                )
            origin = f"{parts.scheme}://{parts.netloc.lower()}"
        origins.add(origin)
    if not origins:
        raise ConfigError("ALLOWED_ORIGINS: empty list")
    return frozenset(origins)


def _tokens(name: str, raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    tokens = tuple(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip()))
    if not tokens:
        raise ConfigError(f"{name}: empty list")
    for token in tokens:
        # What fits in "Authorization: Bearer <token>" unchanged: visible ASCII, no spaces.
        if not all("!" <= char <= "~" for char in token):
            raise ConfigError(f"{name}: tokens must be visible ASCII characters without spaces")
    return tokens


# A host name or address as it appears in a Host header, without the port.
HOST_NAME = re.compile(r"(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])", re.IGNORECASE)


def _hosts(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    hosts = set()
    for item in raw.split(","):
        host = item.strip().lower()
        if not host:
            continue
        name = host[1:] if host.startswith(".") else host
        if host != "*" and not HOST_NAME.fullmatch(name):
            raise ConfigError(
                f"ALLOWED_HOSTS: expected comma-separated host names (no port) like example.com, "
                f".example.com or [::1], got {item.strip()!r}"
            )
        hosts.add(host)
    if not hosts:
        raise ConfigError("ALLOWED_HOSTS: empty list")
    return frozenset(hosts)


def child_environ(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that must see exactly these settings."""
    env = dict(os.environ if environ is None else environ)
    env.update(
        HOST=settings.host,
        PORT=str(settings.port),
        DATA_DIR=str(settings.data_dir),
        DATABASE_URL=settings.database_url,
        MAX_BODY_BYTES=str(settings.max_body_bytes),
        PING_INTERVAL_S=str(settings.ping_interval_s),
        WEB_CONCURRENCY=str(settings.web_concurrency),
        WORKER_MAX_JOBS=str(settings.worker_max_jobs),
        STORE_MAX_TRIES=str(settings.store_max_tries),
        STORE_RETRY_BASE_S=str(settings.store_retry_base_s),
    )
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    if settings.ingest_tokens:
        env["INGEST_TOKEN"] = ",".join(settings.ingest_tokens)
    if settings.read_tokens:
        env["READ_TOKEN"] = ",".join(settings.read_tokens)
    if settings.allowed_hosts is not None:
        env["ALLOWED_HOSTS"] = ",".join(sorted(settings.allowed_hosts))
    if settings.allowed_origins is not None:
        env["ALLOWED_ORIGINS"] = ",".join(sorted(settings.allowed_origins))
    return env
