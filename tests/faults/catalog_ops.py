"""Faults for operating it (SPEC §11): metrics, load shedding, NDJSON, /healthz, OpenAPI, app.json."""

from __future__ import annotations

from tests.faults import Fault

_METRICS = "tests/test_ops.py::test_metrics_add_up_across_web_processes_and_the_worker"
_SHEDDING = (
    "tests/test_ops.py::test_shedding_refuses_writes_past_max_queue_depth_and_stores_nothing_it_refused"
)

FAULTS: list[Fault] = [
    Fault(
        name="shedding-check-removed",
        path="pipeline/ingest.py",
        find="    await shedding.check(found.redis, found.settings.max_queue_depth)\n",
        replace="",
        tests=(_SHEDDING,),
        guarantee="Past MAX_QUEUE_DEPTH writes answer 503 + Retry-After and queue nothing",
    ),
    Fault(
        name="queue-full-told-as-redis-unavailable",
        path="pipeline/shedding.py",
        find='            kind="queue-full",\n',
        replace='            kind="redis-unavailable",\n',
        tests=(_SHEDDING,),
        guarantee="A full queue and an unavailable Redis are distinct problem types",
    ),
    Fault(
        name="ingest-counter-not-incremented",
        path="pipeline/metrics.py",
        find="    INGEST_REQUESTS.inc(labels)\n",
        replace="",
        tests=(_METRICS,),
        guarantee="/metrics counts every ingest request by status",
    ),
    Fault(
        name="worker-stored-not-counted",
        path="pipeline/writer.py",
        find="        metrics.stored(stored, since=started_at)\n",
        replace="",
        tests=(_METRICS,),
        guarantee="/metrics includes the worker's stored count",
    ),
    Fault(
        name="counts-not-added-to-redis",
        path="pipeline/metrics.py",
        find="                            pipe.hincrby(TOTALS_KEY, field, amount)\n",
        replace="                            pass\n",
        tests=(_METRICS,),
        guarantee="A scrape of any web process shows every process's counts",
    ),
    Fault(
        name="slow-close-not-counted",
        path="pipeline/live.py",
        find='        metrics.closed_slow("ws")\n',
        replace="",
        tests=("tests/test_ops.py::test_a_stream_closed_as_too_slow_is_counted",),
        guarantee="/metrics counts streams closed as too slow",
    ),
    Fault(
        name="ndjson-without-trailing-newline",
        path="pipeline/export.py",
        find='NDJSON_LINES = Framing(NDJSON, b"", "", "\\n", "", b"")',
        replace='NDJSON_LINES = Framing(NDJSON, b"", "\\n", "", "\\n", b"")',
        tests=("tests/test_ops.py::test_ndjson_export_has_the_same_rows_one_per_line",),
        guarantee="NDJSON export: one message per line, each ending in \\n",
    ),
    Fault(
        name="healthz-without-queue-age",
        path="pipeline/api.py",
        find='"oldest_age_s": age}',
        replace='"oldest_age_s": None}',
        tests=("tests/test_ops.py::test_healthz_reports_the_oldest_queued_job_and_the_retention",),
        guarantee="/healthz reports the age of the oldest queued job",
    ),
    Fault(
        name="openapi-misses-a-route",
        path="pipeline/openapi.py",
        find='    paths["/json_dummy_ws"] = ',
        replace="    _unused = ",
        tests=("tests/test_openapi.py::test_every_route_is_described_and_nothing_else",),
        guarantee="The OpenAPI document describes every route",
    ),
    Fault(
        name="app-json-missing-a-setting",
        path="app.json",
        find=(
            '    "MAX_QUEUE_DEPTH": {\n'
            '      "description": "Queued or running store jobs past which writes are refused with 503 + '
            'Retry-After (problem type queue-full).",\n'
            '      "value": "100000",\n'
            '      "required": false\n'
            "    },\n"
        ),
        replace="",
        tests=("tests/test_app_json.py::test_every_setting_the_code_reads_is_declared_and_nothing_else",),
        guarantee="app.json declares every setting the code reads",
    ),
    Fault(
        name="failed-not-counted",
        path="pipeline/worker.py",
        find='ctx["job_try"], exc)\n    metrics.failed()\n    await bus.record_failure(\n',
        replace='ctx["job_try"], exc)\n    await bus.record_failure(\n',
        tests=("tests/test_faults.py::test_database_locked_retries_then_gives_up_visibly",),
        guarantee="pipeline_messages_failed_total counts a message whose store gave up; "
        "pipeline_failed_messages shows it until retry-failed",
    ),
]
