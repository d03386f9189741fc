"""Faults for channels and the schema migration (SPEC §9): each must make its tests fail."""

from __future__ import annotations

from tests.faults import Fault

_T = "tests/test_channels.py::"

FAULTS: list[Fault] = [
    Fault(
        name="channel-filter-dropped-on-replay",
        path="pipeline/continuity.py",
        find="await self._store.after_noting_purges(after, REPLAY_PAGE, self._channels)",
        replace="await self._store.after_noting_purges(after, REPLAY_PAGE, None)",
        tests=(_T + "test_filtered_streams_replay_only_their_channels",),
        guarantee="a stream narrowed with ?channel= replays only its channels after a reconnect",
    ),
    Fault(
        name="channel-filter-dropped-live",
        path="pipeline/hub.py",
        find="items = [item for item in items if item.channel in wanted]",
        replace="items = list(items)",
        tests=(_T + "test_filtered_live_stream_skips_other_channels",),
        guarantee="a stream narrowed with ?channel= receives only its channels live",
    ),
    Fault(
        name="migration-not-idempotent",
        path="pipeline/schema.py",
        find="if found != 0 and found < version:",
        replace="if found != 0 and found <= version:",
        tests=(
            _T + "test_release_migrates_a_previous_version_database_several_at_once[sqlite]",
            _T + "test_release_migrates_a_previous_version_database_several_at_once[postgres]",
        ),
        guarantee="release (and every process start) migrates once, however often and however many run",
    ),
    Fault(
        name="migration-leaves-channel-stats-empty",
        path="pipeline/schema.py",
        find="    db.execute_sql(FILL_CHANNEL_STATS)\n",
        replace="",
        tests=(
            _T + "test_release_migrates_a_previous_version_database_several_at_once[sqlite]",
            _T + "test_web_and_workers_migrate_at_start_then_serve_channels[sqlite]",
        ),
        guarantee="after the migration GET /channels counts the old messages in default",
    ),
    Fault(
        name="channel-stats-not-updated-on-insert",
        path="pipeline/store.py",
        find="            self._count_in_channels(inserted)\n",
        replace="",
        tests=(_T + "test_writes_reads_and_channel_figures",),
        guarantee="GET /channels is kept true in the same transaction as every insert",
    ),
    Fault(
        name="channel-name-check-loosened",
        path="pipeline/channels.py",
        find='_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]',
        replace='_NAME = re.compile(rf"[A-Za-z0-9._-][A-Za-z0-9._-]',
        tests=(_T + "test_invalid_names_are_400_naming_the_rule",),
        guarantee="channel names are checked at the edge on every route (400 naming the rule)",
    ),
    Fault(
        name="seq-reused-after-delete",
        path="pipeline/schema.py",
        find='"seq INTEGER PRIMARY KEY AUTOINCREMENT"',
        replace='"seq INTEGER PRIMARY KEY"',
        tests=(_T + "test_seq_is_never_reused_after_the_newest_rows_are_deleted[sqlite]",),
        guarantee="a seq is never handed out twice, even after the newest rows are deleted",
    ),
    Fault(
        name="before-includes-its-seq",
        path="pipeline/api.py",
        find="below = None if before is None else before - 1",
        replace="below = before",
        tests=(_T + "test_before_after_limit_and_tail_per_channel",),
        guarantee="?before=<seq> pages backwards through the messages below seq",
    ),
    Fault(
        name="channel-write-route-dropped",
        path="pipeline/front.py",
        find="(CHANNEL_INGEST_PATH,),",
        # A route with no paths: channel writes fall through to Quart (405).
        replace="(),",
        tests=(_T + "test_writes_reads_and_channel_figures",),
        guarantee="POST/PUT /channels/<name>/messages is accepted and stored in that channel",
    ),
    Fault(
        name="channel-not-carried-in-the-job",
        path="pipeline/bus.py",
        find="job_args = (message_id, payload, received_at, channel)",
        replace="job_args = (message_id, payload, received_at)",
        tests=(_T + "test_writes_reads_and_channel_figures",),
        guarantee="a message is stored in the channel it was sent to",
    ),
]
