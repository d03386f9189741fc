"""Faults for retention and honest continuity (SPEC §10): each must make its tests fail."""

from __future__ import annotations

from tests.faults import Fault

_T = "tests/test_retention.py::"
_BY_COUNT = (
    _T + "test_retention_by_count_while_messages_keep_arriving[sqlite-1]",
    _T + "test_retention_by_count_while_messages_keep_arriving[postgres-2]",
)

FAULTS: list[Fault] = [
    Fault(
        name="purge-one-too-many",
        path="pipeline/store.py",
        find="through = int(oldest[due - 1][0])",
        replace="through = int(oldest[min(due, len(oldest) - 1)][0])",
        tests=_BY_COUNT,
        guarantee="retention never deletes a message newer than its bound",
    ),
    Fault(
        name="purge-leaves-channel-stats-counted",
        path="pipeline/store.py",
        find="UPDATE channel_stats SET count = count - {p}, purged_through",
        replace="UPDATE channel_stats SET count = count - 0 * {p}, purged_through",
        tests=(*_BY_COUNT, _T + "test_retention_by_age_while_messages_keep_arriving[sqlite]"),
        guarantee="GET /channels stays true through purges; a channel left empty disappears",
    ),
    Fault(
        name="resume-skips-the-gap-event",
        path="pipeline/continuity.py",
        find="                yield [gap(after, page[0].seq if page else None)]\n",
        replace="                pass\n",
        tests=(_T + "test_a_resume_across_purged_messages_is_told_of_the_gap_first",),
        guarantee="a resume across purged messages is told so first (gap), never a silent hole",
    ),
    Fault(
        name="no-reset-above-the-highest-seq",
        path="pipeline/continuity.py",
        find="    if after is not None and after > await store.latest_seq():\n",
        replace="    if False:\n",
        tests=(_T + "test_reset_for_a_seq_above_the_highest_and_for_another_epoch",),
        guarantee="a resume from a seq above the highest ever assigned is a reset, not a wait",
    ),
    Fault(
        name="highest-seq-forgotten-after-a-purge",
        path="pipeline/store.py",
        find="UNION ALL SELECT MAX(latest_seq) AS s FROM channel_stats",
        replace="UNION ALL SELECT 0 AS s FROM channel_stats",
        tests=(_T + "test_retention_by_age_while_messages_keep_arriving[sqlite]",),
        guarantee="purging the newest messages does not make their seq look never assigned (no false reset)",
    ),
    Fault(
        name="another-epoch-not-reset",
        path="pipeline/continuity.py",
        find="    if asked_epoch is not None and asked_epoch != epoch:\n",
        replace="    if False:\n",
        tests=(_T + "test_a_replaced_database_resets_a_resuming_client",),
        guarantee="resuming against another database's epoch is a reset",
    ),
    Fault(
        name="ping-without-epoch",
        path="pipeline/live.py",
        find=""",\"epoch\":\"{found.epoch}\"""",
        replace="",
        tests=(_T + "test_epoch_in_pings_and_headers",),
        guarantee="WebSocket pings carry the database's epoch",
    ),
    Fault(
        name="purged-not-counted",
        path="pipeline/retention.py",
        find="                metrics.purged(deleted)\n",
        replace="",
        tests=(_T + "test_retention_by_count_while_messages_keep_arriving[sqlite-1]",),
        guarantee="pipeline_messages_purged_total counts every message retention deleted",
    ),
]
