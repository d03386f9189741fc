"""Faults for run.py's processes: the port, orphans, signals, file permissions (SPEC §6, §8)."""

from __future__ import annotations

from tests.faults import Fault

_BUSY = "tests/test_run.py::test_a_busy_port_stops_at_once_with_one_line"

FAULTS: list[Fault] = [
    Fault(
        name="run-py-takes-its-port-late",
        path="run.py",
        find="listeners = listen(settings.host, settings.port, settings.web_concurrency)",
        replace="listeners = listen(settings.host, 0, settings.web_concurrency)",
        tests=(f"{_BUSY}[run-plain]",),
        guarantee="a busy port stops run.py at once with one line naming it, leaving nothing running",
    ),
    Fault(
        name="web-binds-after-starting-the-app",
        path="run.py",
        find="listener = adopt(args.fd) if args.fd is not None else listen(settings.host, settings.port)[0]",
        replace="listener = adopt(args.fd) if args.fd is not None else None  # type: ignore[assignment]",
        tests=(f"{_BUSY}[web-plain]",),
        guarantee="a busy port stops run.py web at once with one line naming it",
    ),
    Fault(
        name="run-py-joins-a-port-shared-by-another-server",
        path="pipeline/listen.py",
        find="first = _bound(family, address, share=False)",
        replace="first = _bound(family, address, share=True)",
        tests=(f"{_BUSY}[run-reuseport]",),
        guarantee="run.py never shares its port with a server it did not start (SO_REUSEPORT)",
    ),
    Fault(
        name="reuseport-group-not-steered",
        path="pipeline/listen.py",
        find="    if count > 1:\n        _steer_to_first(first, count)",
        replace="    if False:\n        _steer_to_first(first, count)",
        tests=("tests/test_run.py::test_a_stray_server_sharing_the_port_gets_no_connection",),
        guarantee="a server joining run.py's shared port gets no connection",
    ),
    Fault(
        name="children-without-pdeathsig",
        path="pipeline/children.py",
        find="_LIBC is not None and _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0",
        replace="False",
        tests=(
            "tests/test_run.py::test_killing_run_py_leaves_nothing_running[SIGKILL]",
            "tests/test_run.py::test_run_py_killed_while_starting_leaves_nothing_running[redis-started]",
        ),
        guarantee="run.py killed (even SIGKILL, even while starting) leaves no process behind",
    ),
    Fault(
        name="run-py-finishes-starting-before-obeying-sigterm",
        path="run.py",
        find="            stopping = True\n            raise _Stop",
        replace="            stopping = True",
        tests=("tests/test_run.py::test_sigterm_while_run_py_starts_stops_it_there",),
        guarantee="SIGTERM/Ctrl-C stops run.py where it is, also while it starts",
    ),
    Fault(
        name="web-ignores-sigterm-while-starting",
        path="pipeline/web.py",
        find="    if not serving.is_set():\n        _exit(0)\n",
        replace="",
        tests=(
            "tests/test_run.py::test_a_web_process_stops_at_once_on_sigterm_while_it_waits_for_its_database",
        ),
        guarantee="no process ignores SIGTERM: a web process still starting exits at once",
    ),
    Fault(
        name="no-owner-only-umask",
        path="run.py",
        find="    owner_only()  # data files",
        replace="    pass  # data files",
        tests=(
            "tests/test_run.py::test_data_files_are_readable_by_their_owner_only",
            "tests/test_run.py::test_the_procfile_processes_keep_a_sqlite_file_private",
        ),
        guarantee="data files are readable by their owner only (SPEC §8)",
    ),
    Fault(
        name="older-data-files-not-narrowed",
        path="run.py",
        find="        narrow_data(settings.data_dir, settings.database_url)",
        replace="        pass",
        tests=("tests/test_run.py::test_files_left_readable_by_an_older_version_are_narrowed",),
        guarantee="data files left readable by an older version are made owner-only at start",
    ),
]
