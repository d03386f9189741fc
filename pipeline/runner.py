"""arq's worker, made cheap per job and woken by work instead of a timer.

The jobs, the queue and their keys stay arq's (``arq:queue``, ``arq:job:<id>``,
``arq:in-progress:<id>``, ``arq:retry:<id>``), so any arq tool can look at them, and a job
function keeps arq's contract (``ctx``, ``job_try``, ``Retry(defer=...)``). What changes is how
many round trips a job costs. arq claims each job with its own WATCH/MULTI, reads it with another
transaction and finishes it with a third; at a thousand jobs a second those round trips, not the
jobs, fill the worker's core. Here one script claims a whole batch of due jobs and returns their
data and try counts, and the outcomes of finished jobs are written back together, one
transaction per event-loop turn.

Waking: every enqueue publishes on ``pipeline:wake``; the worker polls when woken, when a job
finishes (a slot is free) and otherwise every ``poll_delay`` as a fallback.

Tries are the job function's business (it gets ``job_try`` and records its own failures), so
this runner never drops a job for having run too often, as arq does past ``max_tries``.

It uses about twenty of ``Worker``'s internal names (``start_jobs``, ``_poll_iteration``,
``tasks``, ``sem``, ``job_counter``, ...): ``contracts.py`` lists them, and the worker checks
them when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from arq import Retry
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Worker

from . import bus
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# arq keeps a job's try counter this long (its own constant).
_RETRY_KEY_TTL_S = 88400
# A job timed out by the runner itself (its function has its own, shorter timeout) runs again.
_TIMEOUT_RETRY_MS = 1000

_CLAIM_SCRIPT = f"""
local claimed = {{}}
for i = 3, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    if redis.call('SET', '{in_progress_key_prefix}' .. id, '1', 'NX', 'PX', ARGV[2]) then
      local tries = redis.call('INCR', '{retry_key_prefix}' .. id)
      redis.call('EXPIRE', '{retry_key_prefix}' .. id, {_RETRY_KEY_TTL_S})
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = tries
      claimed[#claimed + 1] = redis.call('GET', '{job_key_prefix}' .. id) or ''
    end
  end
end
return claimed
"""


@dataclass
class _Outcomes:
    """Finished jobs waiting to be written back to Redis in one transaction."""

    done: list[str] = field(default_factory=list)
    retry: list[tuple[str, int]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.done or self.retry or self.released)


class BatchingWorker(Worker):
    """An arq ``Worker`` that claims and finishes jobs in batches and sleeps until woken."""

    def __init__(self, *args: Any, in_progress_ttl_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # arq keeps a running job's key for its timeout plus ten seconds; a killed worker's jobs
        # wait that long for another worker, so keep it just past the job timeout instead.
        self.in_progress_timeout_s = in_progress_ttl_s
        self._wake = asyncio.Event()
        self._claim = self.pool.register_script(_CLAIM_SCRIPT)
        self._outcomes = _Outcomes()
        self._outcomes_ready = asyncio.Event()
        self._closing = False

    async def main(self) -> None:
        """Poll when woken; ride out Redis outages instead of exiting."""
        await self._wait_for_redis()
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        helpers = [
            asyncio.create_task(bus.listen(self.pool, bus.WAKE_CHANNEL, self._on_wake), name="wake"),
            asyncio.create_task(self._write_outcomes_forever(), name="outcomes"),
        ]
        backoff_s = 0.1
        try:
            # On SIGTERM/SIGINT arq stops picking jobs (allow_pick_jobs) and, after its grace
            # period, cancels this task. Ending by itself once the running jobs are done does not
            # depend on that cancellation arriving: on 3.11 one can get lost inside the awaits
            # below, and the worker would never exit.
            while self.allow_pick_jobs or self.tasks:
                self._wake.clear()
                try:
                    await self._poll_iteration()
                    backoff_s = 0.1
                except bus.REDIS_ERRORS as exc:
                    logger.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    continue
                delay_s = self.poll_delay_s if self.allow_pick_jobs else 0.05
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()
        finally:
            self._closing = True
            self._outcomes_ready.set()
            await cancel_and_wait(helpers)

    async def _wait_for_redis(self) -> None:
        backoff_s = 0.1
        while True:
            try:
                await self.pool.ping()
                return
            except bus.REDIS_ERRORS as exc:
                logger.warning("waiting for redis (%s)", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _on_wake(self, _: bytes) -> None:
        self._wake.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim due jobs (up to the free slots) with one script and start them."""
        free = self.max_jobs - self.job_counter
        candidates = [job_id for job_id in job_ids if job_id.decode() not in self.tasks][:free]
        if not candidates:
            return
        claimed = await self._claim(
            keys=[self.queue_name],
            args=[timestamp_ms(), int(self.in_progress_timeout_s * 1000), *candidates],
        )
        for index in range(0, len(claimed), 4):
            job_id, score, tries, raw = claimed[index : index + 4]
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(
                self._run_claimed(job_id.decode(), int(float(score)), int(tries), raw)
            )
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id.decode()] = task

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # A finished job frees a slot: look for more work now rather than at the next tick.
        self._wake.set()

    async def _run_claimed(self, job_id: str, score: int, tries: int, raw: bytes) -> None:
        if not raw:
            logger.error("job %s has no data (expired?); dropping it", job_id)
            self.jobs_failed += 1
            return self._record("done", job_id)
        try:
            name, args, kwargs, _, enqueue_ms = deserialize_job_raw(raw, deserializer=self.job_deserializer)
            function = self.functions[name]
        except Exception:
            logger.exception("job %s cannot run; dropping it", job_id)
            self.jobs_failed += 1
            return self._record("done", job_id)
        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": tries,
            "enqueue_time": ms_to_datetime(enqueue_ms),
            "score": score,
        }
        timeout_s = function.timeout_s or self.job_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await function.coroutine(ctx, *args, **kwargs)
        except Retry as retry:
            self.jobs_retried += 1
            self._record("retry", job_id, (retry.defer_score or 0) + timestamp_ms() - score)
        except TimeoutError:
            logger.warning("job %s ran past %.1fs; it will run again", job_id, timeout_s)
            self.jobs_retried += 1
            self._record("retry", job_id, _TIMEOUT_RETRY_MS + timestamp_ms() - score)
        except asyncio.CancelledError:
            # The worker is stopping: hand the job back for another worker to run at once.
            # (Like arq, end the task normally so shutdown can gather it.)
            self.jobs_retried += 1
            self._record("released", job_id)
        except Exception:
            logger.exception("job %s failed", job_id)
            self.jobs_failed += 1
            self._record("done", job_id)
        else:
            self.jobs_complete += 1
            self._record("done", job_id)

    def _record(self, outcome: str, job_id: str, defer_ms: int = 0) -> None:
        if outcome == "retry":
            self._outcomes.retry.append((job_id, defer_ms))
        else:
            getattr(self._outcomes, outcome).append(job_id)
        self._outcomes_ready.set()

    async def _write_outcomes_forever(self) -> None:
        while not self._closing:
            await self._outcomes_ready.wait()
            try:
                await self._write_outcomes()
            except bus.REDIS_ERRORS as exc:
                # Unwritten outcomes leave jobs "in progress": they run again once the key
                # expires, and storing is idempotent. Nothing is lost by giving up here.
                logger.warning("could not record finished jobs: %s", exc)
                await asyncio.sleep(0.5)

    async def _write_outcomes(self) -> None:
        outcomes, self._outcomes = self._outcomes, _Outcomes()
        self._outcomes_ready.clear()
        if not outcomes:
            return
        async with self.pool.pipeline(transaction=True) as pipe:
            for job_id in outcomes.done:
                pipe.delete(
                    in_progress_key_prefix + job_id, retry_key_prefix + job_id, job_key_prefix + job_id
                )
            if outcomes.done:
                pipe.zrem(self.queue_name, *outcomes.done)
            for job_id, defer_ms in outcomes.retry:
                pipe.delete(in_progress_key_prefix + job_id)
                pipe.zincrby(self.queue_name, defer_ms, job_id)
            for job_id in outcomes.released:
                pipe.delete(in_progress_key_prefix + job_id)
            await pipe.execute()

    async def close(self) -> None:
        """Let running jobs end, write back their outcomes, then arq's own shutdown."""
        if self._pool is not None:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            for job_id, task in self.tasks.items():
                # Cancelled before it began: hand the job back like any interrupted one.
                if task.cancelled():
                    self._record("released", job_id)
            # All ended; arq's close would gather them again and re-raise their cancellation.
            self.tasks.clear()
            with contextlib.suppress(*bus.REDIS_ERRORS):
                await self._write_outcomes()
        await super().close()
