"""Faults for one implementation per hot path (front.py's route table) and the dependency contract."""

from __future__ import annotations

from tests.faults import Fault

FAULTS: list[Fault] = [
    Fault(
        name="raw-frame-writer-off",
        path="pipeline/live.py",
        find="    if isinstance(stream, WSStream):\n        _note_writer(WRITER_RAW, send)",
        replace="    if isinstance(stream, WSStream) and False:\n        _note_writer(WRITER_RAW, send)",
        tests=("tests/test_front.py::test_websocket_streams_use_the_raw_frame_writer_under_hypercorn",),
        guarantee="Under hypercorn, WebSocket frames go out by the raw-frame writer; /healthz says so",
    ),
    Fault(
        name="fast-path-error-wrapper-removed",
        path="pipeline/front.py",
        find="            await handler(found, scope, receive, send)\n        except Exception:\n",
        replace="            await handler(found, scope, receive, send)\n        except ZeroDivisionError:\n",
        tests=("tests/test_front.py::test_an_unexpected_error_on_the_fast_path_is_a_logged_problem_500",),
        guarantee="An unexpected error on the fast path answers problem+json 500 (not an empty 500)",
    ),
    Fault(
        name="fast-path-error-logged-twice",
        path="pipeline/front.py",
        find="            await _refuse(scope, send, 500, _UNEXPECTED)\n",
        replace="            await _refuse(scope, send, 500, _UNEXPECTED)\n            raise\n",
        tests=("tests/test_front.py::test_an_unexpected_error_on_the_fast_path_is_a_logged_problem_500",),
        guarantee="An unexpected error on the fast path is logged with its traceback once",
    ),
    Fault(
        name="fast-routes-unknown-to-quart",
        path="pipeline/front.py",
        find="        for route in routes:\n            for path in route.paths:\n",
        replace="        for route in ():\n            for path in route.paths:\n",
        tests=(
            "tests/test_front.py::test_other_methods_on_the_fast_paths_are_405_naming_every_allowed_method",
        ),
        guarantee="Other methods on the ingest paths answer 405 with Allow naming POST and PUT",
    ),
    Fault(
        name="ingest-path-dropped-from-table",
        path="pipeline/front.py",
        find='("/messages", "/json_dummy", "/json_dummy/")',
        replace='("/messages", "/json_dummy")',
        tests=("tests/test_ingest.py::test_every_ingest_route_answers_every_case",),
        guarantee="POST/PUT on every ingest path (SPEC §3) is accepted",
    ),
    Fault(
        name="contract-arq-name-unlisted",
        path="pipeline/contracts.py",
        find='    "job_counter": "how many jobs run now",\n',
        replace="",
        tests=("tests/test_contracts.py::test_the_contract_lists_every_arq_name_the_runner_uses",),
        guarantee="Every arq internal runner.py relies on is listed in contracts.py",
    ),
    Fault(
        name="contract-arq-name-missing",
        path="pipeline/contracts.py",
        find='    "start_jobs": ',
        replace='    "start_jobs_in_a_batch": ',
        tests=("tests/test_contracts.py::test_arq_worker_has_every_name_the_runner_relies_on",),
        guarantee="A missing arq internal fails the contract check, naming it",
    ),
    Fault(
        name="contract-check-skips-attributes",
        path="pipeline/contracts.py",
        find="        if not hasattr(worker, name):\n",
        replace="        if False:\n",
        tests=("tests/test_contracts.py::test_a_missing_name_is_named_in_the_failure",),
        guarantee="The contract check names a missing arq attribute",
    ),
    Fault(
        name="contract-redis-wording-wrong",
        path="pipeline/contracts.py",
        find='REDIS_REFUSED_WORDING = "connecting to"',
        replace='REDIS_REFUSED_WORDING = "connection refused"',
        tests=("tests/test_contracts.py::test_redis_py_words_a_refused_connection_as_bus_expects",),
        guarantee="bus.py's test for a refused connection matches redis-py's real wording",
    ),
    Fault(
        name="contract-redis-wording-too-broad",
        path="pipeline/contracts.py",
        find='REDIS_REFUSED_WORDING = "connecting to"',
        replace='REDIS_REFUSED_WORDING = ""',
        tests=("tests/test_contracts.py::test_a_connection_dropped_after_sending_is_not_worded_as_refused",),
        guarantee="A connection dropped after sending is not taken for a refused one",
    ),
]
