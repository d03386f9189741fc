"""Data files readable by their owner only (SPEC §8).

run.py sets a umask of 077 for itself and every process it starts (also when the Procfile
starts ``run.py web|worker|release``), so whatever they create — the SQLite file and its
``-wal``/``-shm``, the private Redis's append-only files, its socket and log, ``run.lock`` — is
0600 and folders 0700. Files left by an older version with wider modes are narrowed at start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

OWNER_ONLY_UMASK = 0o077
# What the private Redis keeps in the data folder (redis.sock is made 0700 by Redis itself).
_REDIS_FILES = ("appendonlydir", "appendonly.aof", "dump.rdb", "redis.log", "redis.sock")


def owner_only() -> None:
    """From now on this process and its children create files 0600 and folders 0700."""
    os.umask(OWNER_ONLY_UMASK)


def private_dir(path: Path) -> None:
    """Create ``path`` (0700), or narrow it if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    narrow(path)


def narrow(*paths: Path) -> None:
    """Take group and other permissions away from each path that exists (links are left)."""
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(mode) and mode & OWNER_ONLY_UMASK:
            os.chmod(path, stat.S_IMODE(mode) & ~OWNER_ONLY_UMASK)


def narrow_data(data_dir: Path, database_url: str) -> None:
    """Narrow what an older run left: the SQLite file and its companions, Redis's files."""
    database = sqlite_path(database_url)
    if database is not None:
        narrow(*(Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")))
    narrow(data_dir / "run.lock", *(data_dir / name for name in _REDIS_FILES))
    aof_dir = data_dir / "appendonlydir"
    if aof_dir.is_dir() and not aof_dir.is_symlink():
        narrow(*aof_dir.iterdir())


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///`` URL (``sqlite:////abs/path`` or ``sqlite:///rel/path``)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        return None
    path = parts.path
    return path[1:] if path.startswith("//") else path.lstrip("/")
