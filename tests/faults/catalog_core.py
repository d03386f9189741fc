"""Faults of the core guarantees: accepted ⇒ stored once, in order, delivered once, in order."""

from __future__ import annotations

from tests.faults import Fault

_ORDER = "tests/test_order.py::test_accepted_one_after_another_are_stored_in_that_order"
_KILLED_MID_JOB = "tests/test_faults.py::test_worker_killed_mid_load_loses_nothing"
_RUN_TWICE = "tests/test_faults.py::test_a_job_run_twice_stores_one_row"
_SIGTERM = "tests/test_faults.py::test_worker_sigterm_hands_back_its_jobs"
_GAP_SQLITE = "tests/test_faults.py::test_live_streams_across_a_lost_notification"
_PG_ORDER = "tests/test_store.py::test_concurrent_writers_commit_in_seq_order[postgres]"
_PG_SCALEOUT = "tests/test_scaleout.py::test_procfile_two_webs_two_workers_on_postgres"

FAULTS: list[Fault] = [
    Fault(
        name="fifo-score-by-millisecond",
        path="pipeline/bus.py",
        find="redis.call('ZADD', KEYS[2], score, ARGV[2])",
        replace="redis.call('ZADD', KEYS[2], math.floor(now_us / 1000), ARGV[2])",
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
        find="batch = [(row, future) for row, future in batch if not future.done()]",
        replace="batch = [(row, future) for row, future in reversed(batch) if not future.done()]",
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
        more=(("id = peewee.CharField(max_length=36, unique=True)", "id = peewee.CharField(max_length=36)"),),
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
        tests=(_GAP_SQLITE, _PG_SCALEOUT),
        guarantee="Live clients get every stored message once, in order: a notification that skips "
        "ahead (a lost one, or several workers) is preceded by the missing range from the database.",
    ),
    Fault(
        name="live-duplicate-filter-removed",
        path="pipeline/live.py",
        find="fresh = [item for item in batch if item.seq > sent]",
        replace="fresh = batch",
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
        tests=(_PG_ORDER, _PG_SCALEOUT),
        guarantee="Several workers on Postgres: seq follows commit order (a reader polling ?after= "
        "never skips one).",
    ),
]
