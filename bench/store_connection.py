"""Micro-benchmark: the cost of pipeline.store.Store.save() as shipped, against the same Store
with its SQLite connection kept open (one per store thread) instead of opened per call.

    .venv/bin/python -m bench.store_connection [--saves 300]

Store._guarded wraps every call in peewee's connection_context(): connect, set the PRAGMAs,
run, close. Closing the last connection to a WAL database also checkpoints it. This measures
what that costs per save() of 1 and of 20 rows (wall time and this process's CPU), in a fresh
temporary database, with the pipeline's own Store and schema. Nothing in pipeline/ is changed:
the "kept" variant is a subclass defined here.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.store import Store


class KeptConnectionStore(Store):
    """The same Store, but each store thread keeps its connection open."""

    def _guarded(self, fn: Any, *args: Any) -> Any:
        if self._db.is_closed():
            self._db.connect()
        return fn(*args)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(cls: type[Store], saves: int, batch: int) -> tuple[float, float]:
    directory = Path(tempfile.mkdtemp(prefix="pipeline-bench-store-"))
    try:
        store = cls(f"sqlite:///{directory}/pipeline.db", threads=1)
        await store.create_tables()
        rows = [
            [(str(uuid.uuid4()), '{"n":1}', "2026-01-01T00:00:00.000000Z") for _ in range(batch)]
            for _ in range(saves)
        ]
        t0, c0 = time.perf_counter(), _cpu_s()
        for chunk in rows:
            await store.save(chunk)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        await store.close()
        return 1000 * wall / saves, 1000 * cpu / saves
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def main(saves: int) -> None:
    print("save() of N rows, per call: wall ms / CPU ms (median of 3)")
    for batch in (1, 20):
        for cls in (Store, KeptConnectionStore):
            results = sorted([await measure(cls, saves, batch) for _ in range(3)])
            wall, cpu = results[1]
            print(f"  {batch:2d} row(s)  {cls.__name__:20s}  {wall:5.2f} ms wall  {cpu:5.2f} ms CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--saves", type=int, default=300)
    asyncio.run(main(parser.parse_args().saves))
