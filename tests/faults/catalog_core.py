"""Faults of the core guarantees: accepted ⇒ stored once, in order, delivered once, in order."""

from __future__ import annotations

from tests.faults import Fault

_ORDER = "tests/test_order.py::test_accepted_one_after_another_are_stored_in_that_order"
_KILLED_MID_JOB = "tests/test_faults.py::test_worker_killed_mid_load_loses_nothing"
_RUN_TWICE = "tests/test_faults.py::test_a_job_run_twice_stores_one_row"
_SIGTERM = "tests/test_faults.py::test_worker_sigterm_hands_back_its_jobs"
_GAP_SQLITE = "tests/test_faults.py::test_live_streams_across_a_lost_notification"
_PG_ORDER = "tests/test_store.py::test_a_writer_held_up_after_taking_its_seqs_holds_up_the_others"
_PG_SCALEOUT = "tests/test_scaleout.py::test_procfile_two_webs_two_workers_on_postgres"

FAULTS: list[Fault] = [
    Fault(
        name="fifo-score-by-millisecond",
        path="pipeline/bus.py",
        find="redis.call('ZADD', KEYS[2], score, ARGV[2])",
        replace="redis.call('ZADD', KEYS[2], math.floor(due_us / 1000), ARGV[2])",
        tests=(_ORDER,),
        guarantee="Messages accepted one after another are stored in that order (one worker): "
        "jobs scored by the millisecond tie, and ties come out in the random order of their ids.",
    ),
    Fault(
        name="fifo-claim-order-shuffled",
        path="pipeline/runner.py",
        find="candidates = [job_id for job_id in job_ids if job_id.decode() not in self.tasks][:free]",
        replace="candidates = sorted(job_id for job_id in job_ids if job_id.decode() not in self.tasks)"
        "[:free]",
        tests=(_ORDER,),
        guarantee="Messages accepted one after another are stored in that order (one worker): "
        "the worker claims due jobs in id order instead of queue order.",
    ),
    Fault(
        name="fifo-group-commit-reversed",
        path="pipeline/writer.py",
        find="batch = [(rows, future) for rows, future in batch if not future.done()]",
        replace="batch = [(rows, future) for rows, future in reversed(batch) if not future.done()]",
        tests=(_ORDER,),
        guarantee="Messages accepted one after another are stored in that order (one worker): "
        "the group commit inserts a batch's rows backwards.",
    ),
    Fault(
        name="enqueue-deadline-removed",
        path="pipeline/bus.py",
        find="if math.floor(now_us / 1000) > tonumber(ARGV[1]) then",
        replace="if false then",
        tests=("tests/test_api.py::test_redis_not_answering_is_503_within_seconds",),
        guarantee="A write answered with an error is never stored: the job script that a paused "
        "Redis runs after the web answered 503 must write nothing.",
    ),
    Fault(
        name="on-conflict-dropped",
        path="pipeline/store.py",
        find=" ON CONFLICT (id) DO NOTHING",
        replace="",
        tests=(_RUN_TWICE,),
        guarantee="A job run twice stores one row (and its second run is no failure): saving is "
        "idempotent on the message id.",
    ),
    Fault(
        name="on-conflict-and-unique-id-dropped",
        path="pipeline/store.py",
        find=" ON CONFLICT (id) DO NOTHING",
        replace="",
        more=(("pipeline/schema.py", '"CREATE UNIQUE INDEX IF NOT EXISTS message_id ON message (id)",', ""),),
        tests=(_RUN_TWICE,),
        guarantee="Accepted ⇒ stored exactly once: without the unique id a job run twice stores two rows.",
    ),
    Fault(
        name="ack-before-commit",
        path="pipeline/runner.py",
        find="        timeout_s = function.timeout_s or self.job_timeout_s\n",
        replace='        self._record("done", job_id)\n'
        "        timeout_s = function.timeout_s or self.job_timeout_s\n",
        tests=(_KILLED_MID_JOB,),
        guarantee="A worker killed (kill -9) mid-job loses nothing: a job is finished on Redis only "
        "once its row is committed.",
    ),
    Fault(
        name="sigterm-drops-interrupted-jobs",
        path="pipeline/runner.py",
        find='            self.jobs_retried += 1\n            self._record("released", job_id)',
        replace='            self.jobs_retried += 1\n            self._record("done", job_id)',
        tests=(_SIGTERM,),
        guarantee="SIGTERM to a worker: it finishes or hands back its jobs (interrupted ones are "
        "released for another worker, not dropped).",
    ),
    Fault(
        name="hub-hands-out-past-a-gap",
        path="pipeline/hub.py",
        find="if item.seq > self.last_seq + 1 and not await self._fill(item.seq - 1):",
        replace="if False:",
        tests=(_GAP_SQLITE,),
        guarantee="Live clients get every stored message once, in order: a notification that skips "
        "ahead (a lost one, or several workers) is preceded by the missing range from the database.",
    ),
    Fault(
        name="hub-hands-out-past-a-gap-scaled-out",
        path="pipeline/hub.py",
        find="if item.seq > self.last_seq + 1 and not await self._fill(item.seq - 1):",
        replace="if False:",
        tests=(_PG_SCALEOUT,),
        guarantee="2 web + 2 worker on Postgres: a client on web A receives, once and in order, what "
        "was sent to web B (two workers' notifications arrive out of order).",
    ),
    Fault(
        name="hub-reconcile-removed",
        path="pipeline/hub.py",
        find="            if latest > self.last_seq:\n                await self.catch_up()",
        replace="            pass",
        tests=(_GAP_SQLITE,),
        guarantee="Live clients get every stored message: one whose notification was lost, with no "
        "later one to show the gap, is found by the hub's periodic look at the database.",
    ),
    Fault(
        name="live-duplicate-filter-removed",
        path="pipeline/live.py",
        find="fresh = [item for item in batch if item.seq > subscription.sent]",
        replace="fresh = batch",
        # The direct hand-out to an idle stream (hub.Subscription.offer) filters the same way.
        more=(("pipeline/hub.py", "            if items[0].seq <= self.sent:\n", "            if False:\n"),),
        tests=(_GAP_SQLITE,),
        guarantee="A stream resuming with ?after= sees no message twice: what the replay sent and "
        "the hub then hands out is dropped.",
    ),
    Fault(
        name="postgres-advisory-lock-dropped",
        path="pipeline/store.py",
        find='self._execute("SELECT pg_advisory_xact_lock(%s)", (_SEQ_LOCK_KEY,))\n'
        "            p = self._param",
        replace="p = self._param",
        tests=(_PG_ORDER,),
        guarantee="Several workers on Postgres: seq follows commit order (a reader polling ?after= "
        "never skips one).",
    ),
    Fault(
        name="idempotency-key-ignored",
        path="pipeline/bus.py",
        find="    return {'existing', previous}\n",
        replace="",
        tests=(
            "tests/test_api.py::test_idempotency_key",
            "tests/test_api.py::test_idempotency_key_holds_across_web_processes",
        ),
        guarantee="Same Idempotency-Key + body ⇒ same id, stored once, across web processes.",
    ),
    Fault(
        name="private-redis-without-append-only-file",
        path="pipeline/local_redis.py",
        find='"--appendonly", "yes" if self.appendonly else "no",',
        replace='"--appendonly", "no",',
        tests=("tests/test_faults.py::test_everything_killed_at_once_then_restarted",),
        guarantee="Everything killed at once, then python run.py again: all accepted stored once "
        "(the private Redis keeps its jobs in its append-only file).",
    ),
    Fault(
        name="worker-gives-up-when-redis-goes",
        path="pipeline/runner.py",
        find="                except bus.REDIS_ERRORS as exc:\n"
        '                    logger.warning("redis unavailable',
        replace='                except () as exc:\n                    logger.warning("redis unavailable',
        tests=("tests/test_faults.py::test_redis_restart_under_load_with_live_clients",),
        guarantee="Redis restarted or killed under load: the worker reconnects by itself and "
        "everything accepted is stored once.",
    ),
    Fault(
        name="failed-store-not-recorded",
        path="pipeline/worker.py",
        find="    await bus.record_failure(",
        replace="    bus.record_failure(",
        tests=("tests/test_faults.py::test_database_locked_retries_then_gives_up_visibly",),
        guarantee="A store that fails past its last try is recorded as failed, visibly (healthz "
        "degraded, GET /messages/<id> failed), not silently dropped.",
    ),
    Fault(
        name="slow-client-buffer-unbounded",
        path="pipeline/hub.py",
        find="if len(self._items) > self._max_messages or self._bytes > self._max_bytes:",
        replace="if False:",
        # The socket-backlog check in take_pending would also notice a stalled reader; without
        # either, only the write-drain cut-off is left, long after the bound was passed.
        more=(
            (
                "and backlog is not None and self._bytes + backlog() > self._max_bytes:",
                "and False:",
            ),
        ),
        tests=("tests/test_slow_clients.py::test_a_stalled_sse_stream_ends_and_resumes",),
        guarantee="A client that stops reading is closed (1013, or the SSE response ends) and the "
        "web process's memory stays bounded.",
    ),
    Fault(
        name="web-sigterm-leaves-streams-open",
        path="pipeline/app.py",
        find="        found.hub.close_all()",
        replace="        pass",
        tests=("tests/test_scaleout.py::test_sigterm_closes_streams_and_stops_the_web_process",),
        guarantee="SIGTERM to web: streams close (1001, SSE end) and it exits.",
    ),
    Fault(
        name="ctrl-c-leaves-redis-running",
        path="run.py",
        find="            local_redis.stop(timeout_s=1.0)\n",
        replace="            pass\n",
        tests=("tests/test_run.py::test_one_command_runs_everything_and_ctrl_c_stops_it",),
        guarantee="Ctrl-C stops everything run.py started within 5 s, leaving nothing behind.",
    ),
]
