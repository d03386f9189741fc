"""Faults for bulk ingest (SPEC §12): each breaks one promise of a batch, and its test must fail."""

from __future__ import annotations

from tests.faults import Fault

_T = "tests/test_bulk.py::"
_ORDER = _T + "test_a_batch_is_stored_in_line_order_each_an_ordinary_message"
_BAD = _T + "test_a_bad_line_is_400_naming_it_and_nothing_is_queued"

FAULTS: list[Fault] = [
    Fault(
        name="bulk-batch-split-into-transactions",
        path="pipeline/worker.py",
        find="            stored = await writer.save_batch(rows)\n",
        replace="            stored = [await writer.save(row) for row in rows]\n",
        tests=(_ORDER,),
        guarantee="One transaction per batch: a batch's documents are committed together (one "
        "persisted_at), never some of them.",
    ),
    Fault(
        name="bulk-line-numbers-off-by-one",
        path="pipeline/bulk.py",
        find='enumerate(body.split(b"\\n"), start=1)',
        replace='enumerate(body.split(b"\\n"))',
        tests=(_BAD + "[malformed-line-3-after-a-blank]",),
        guarantee="A bad line is 400 naming its line number, counted from 1 with blank lines.",
    ),
    Fault(
        name="bulk-blank-lines-not-counted",
        path="pipeline/bulk.py",
        find="            numbered.append((number, line))\n",
        replace="            numbered.append((len(numbered) + 1, line))\n",
        tests=(_BAD + "[malformed-line-3-after-a-blank]",),
        guarantee="Line numbers count blank lines, as an editor shows them.",
    ),
    Fault(
        name="bulk-validation-skipped-after-the-first-line",
        path="pipeline/bulk.py",
        find="            texts.append(parse_body(line))\n",
        replace="            texts.append(parse_body(line) if not texts "
        "else line.decode('utf-8', 'ignore'))\n",
        tests=(_BAD + "[nan-crlf]", _BAD + "[lone-surrogate]"),
        guarantee="Every line is validated by the same path as a single document; one bad line "
        "refuses the whole batch and nothing is queued.",
    ),
    Fault(
        name="bulk-lines-split-at-unicode-line-breaks",
        path="pipeline/bulk.py",
        find='enumerate(body.split(b"\\n"), start=1)',
        replace='enumerate((t.encode() for t in body.decode("utf-8", "replace").splitlines()), start=1)',
        tests=(_ORDER,),
        guarantee="Lines end at \\n only: raw U+2028/U+2029/U+0085 inside strings never end a line.",
    ),
    Fault(
        name="bulk-more-than-1000-accepted",
        path="pipeline/bulk.py",
        find="    if len(numbered) > MAX_DOCUMENTS:\n",
        replace="    if len(numbered) > 10 * MAX_DOCUMENTS:\n",
        tests=(_T + "test_batch_size_bounds",),
        guarantee="More than 1,000 documents in one request is 413, and nothing is queued.",
    ),
    Fault(
        name="bulk-idempotency-key-ignored",
        path="pipeline/ingest.py",
        find="            received_at,\n            channel=channel,\n"
        "            idempotency_key=idempotency_key,\n",
        replace="            received_at,\n            channel=channel,\n            idempotency_key=None,\n",
        tests=(_T + "test_idempotency_key_covers_the_whole_batch",),
        guarantee="Idempotency-Key covers the whole batch: a replay gets the first answer (same ids) "
        "and is stored once.",
    ),
    Fault(
        name="bulk-enqueue-deadline-removed",
        path="pipeline/bus.py",
        find="if tonumber(ARGV[1]) < math.floor(at_us / 1000) then",
        replace="if false then",
        tests=(_T + "test_redis_paused_mid_enqueue_stores_nothing_of_the_batch",),
        guarantee="A batch answered 503 while Redis was paused is never stored: its script, run "
        "late, writes nothing.",
    ),
    Fault(
        name="bulk-ids-unmarked-before-commit",
        path="pipeline/worker.py",
        find="            stored = await writer.save_batch(rows)\n",
        replace="            await bus.batch_done(ctx['redis'], message_ids)\n"
        "            stored = await writer.save_batch(rows)\n",
        tests=(_T + "test_worker_killed_mid_batch_stores_every_document_once",),
        guarantee="GET /messages/<id> says queued for every document of a batch until it is "
        "stored, also when the worker storing it was killed.",
    ),
    Fault(
        name="bulk-queued-documents-never-uncounted",
        path="pipeline/bus.py",
        find="if removed > 1 then redis.call('DECRBY', KEYS[2], removed - 1) end",
        replace="",
        tests=(_T + "test_get_by_id_says_queued_for_each_until_stored",),
        guarantee="A committed batch stops counting towards the queue's depth in documents "
        "(load shedding counts a bulk write's documents).",
    ),
    Fault(
        name="bulk-stream-bound-one-mebibyte",
        path="pipeline/hub.py",
        find="    return max(MAX_BUFFER_BYTES, 2 * (max_body_bytes + MAX_DOCUMENTS * _ENVELOPE_BYTES))\n",
        replace="    return MAX_BUFFER_BYTES\n",
        tests=(_T + "test_live_streams_get_each_batch_once_in_order_and_a_reading_client_is_not_closed",),
        guarantee="A live client that keeps reading is never closed as slow because a full batch "
        "arrived at once (its bound holds two full batches).",
    ),
    Fault(
        name="hand-out-per-document",
        path="pipeline/hub.py",
        find="        if len(self._outgoing) >= MAX_DOCUMENTS:\n            self._flush()\n",
        replace="        if True:\n            self._flush()\n",
        tests=(_T + "test_a_batch_reaches_each_live_stream_in_one_write",),
        guarantee="A batch reaches each live stream in one write, not one per document.",
    ),
    Fault(
        name="bulk-never-pushes-back",
        path="pipeline/bus.py",
        find="if oldest[2] and at_us / 1000 - tonumber(oldest[2]) > tonumber(ARGV[8]) then",
        replace="if false then",
        tests=(_T + "test_get_by_id_says_queued_for_each_until_stored",),
        guarantee="When storage is behind (the oldest queued job waited past 100 ms), a batch is "
        "503 + Retry-After and queues nothing, rather than growing the queue.",
    ),
    Fault(
        name="bulk-shedding-counts-jobs",
        path="pipeline/shedding.py",
        find="_depth.value = await bus.queued_documents(redis)",
        replace="_depth.value = int(await redis.zcard(bus.QUEUE_NAME))",
        tests=(_T + "test_load_shedding_counts_a_batch_documents",),
        guarantee="Load shedding counts a bulk write's documents, not its one job (SPEC §11).",
    ),
    Fault(
        name="bulk-announced-message-by-message",
        path="pipeline/writer.py",
        find="            await bus.publish(self._redis, pack([render(message) for message in stored]))\n",
        replace="            for message in stored:\n"
        "                await bus.publish(self._redis, pack([render(message)]))\n",
        tests=(_T + "test_a_batch_is_announced_in_one_notification",),
        guarantee="One pub/sub notification per batch (so one write per connection), not one per document.",
    ),
]
