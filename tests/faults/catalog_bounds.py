"""Faults for the bounds under attack (SPEC §3 strictness, §4, §8): each must be caught."""

from __future__ import annotations

from tests.faults import Fault

_HOSTILE = "tests/test_hostile.py::"
_SLOW = (
    "tests/test_slow_clients.py::test_a_client_that_never_reads_is_closed_within_30_s_while_others_keep_up"
)

_CL_TE = _HOSTILE + "test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed"

FAULTS: list[Fault] = [
    Fault(
        name="websocket-deflate-negotiated",
        path="pipeline/live.py",
        find="        stream.handshake.extensions = None\n",
        replace="        pass\n",
        tests=(_HOSTILE + "test_websocket_negotiates_no_compression",),
        guarantee="No compression is negotiated for incoming WebSocket frames (no inflate bombs)",
    ),
    Fault(
        name="pages-not-bounded-by-bytes",
        path="pipeline/store.py",
        find="        limit = self._rows_within(seq, until, limit, channels, max_bytes)\n",
        replace="",
        tests=(_HOSTILE + "test_concurrent_reads_of_large_messages_stay_bounded_and_ingest_keeps_answering",),
        guarantee="GET /messages bounds its memory by bytes, not rows",
    ),
    Fault(
        name="numbers-parsed-with-int",
        path="pipeline/bounds.py",
        find="    if not (raw.isascii() and raw.isdigit()) or len(digits) > _MAX_DIGITS or",
        replace="    if int(raw) < 0 or",
        tests=(
            _HOSTILE + "test_query_numbers_are_ascii_digits_up_to_2_63_minus_1[GET-after-plus]",
            _HOSTILE + "test_websocket_after_is_refused_before_the_upgrade[fullwidth-digit]",
        ),
        guarantee="Numbers in queries and Last-Event-ID are ASCII digits only, up to 2^63-1",
    ),
    Fault(
        name="numbers-unbounded",
        path="pipeline/bounds.py",
        find=" or int(digits) > MAX_WHOLE_NUMBER:",
        replace=":",
        tests=(
            _HOSTILE + "test_query_numbers_are_ascii_digits_up_to_2_63_minus_1[GET-after-2-63]",
            _HOSTILE + "test_websocket_after_is_refused_before_the_upgrade[2-63]",
        ),
        guarantee="A number above 2^63-1 is 400, never a 500 or a stream that opens then dies",
    ),
    Fault(
        name="sse-split-by-splitlines",
        path="pipeline/hub.py",
        find="_SSE_LINE_END.split(rendered)",
        replace="rendered.splitlines()",
        tests=(_HOSTILE + "test_sse_splits_data_lines_only_at_cr_lf_crlf",),
        guarantee="SSE data: lines are split only at CR, LF or CRLF",
    ),
    Fault(
        name="huge-number-path-skips-surrogates",
        path="pipeline/messages.py",
        find='        json.dumps(document, ensure_ascii=False).encode("utf-8")\n',
        replace="        pass\n",
        tests=(_HOSTILE + "test_every_parsing_path_applies_the_same_rules[huge-number-lone-surrogate]",),
        guarantee="The same validation rules hold on every parsing path, including huge numbers",
    ),
    Fault(
        name="nesting-bound-1024",
        path="pipeline/messages.py",
        find="MAX_DEPTH = 512\n",
        replace="MAX_DEPTH = 1024\n",
        tests=(
            _HOSTILE + "test_every_parsing_path_applies_the_same_rules[array-513]",
            _HOSTILE + "test_every_parsing_path_applies_the_same_rules[huge-number-array-513]",
        ),
        guarantee="A document nested deeper than 512 levels is 400",
    ),
    Fault(
        name="content-length-with-transfer-encoding-allowed",
        path="pipeline/bounds.py",
        find='        if scope["type"] == "http" and ambiguous_framing(scope["headers"]):\n',
        replace="        if False:\n",
        tests=(_CL_TE + "[host-put-cl-te]", _CL_TE + "[bad-host-put-cl-te]"),
        guarantee="A request with both Content-Length and Transfer-Encoding is refused and closed",
    ),
    Fault(
        name="h2c-served",
        path="pipeline/web.py",
        find="    _http1_only()\n",
        replace="",
        tests=(_HOSTILE + "test_h2c_upgrade_is_not_offered",),
        guarantee="HTTP/1.1 only: no h2c upgrade or prior knowledge",
    ),
    Fault(
        name="socket-backlog-not-counted",
        path="pipeline/hub.py",
        find="backlog is not None and self._bytes + backlog() > self._max_bytes:",
        replace="backlog is not None and False:",
        tests=(_SLOW + "[ws-1500KB]",),
        guarantee="A client that stops reading is closed within 30 s, its socket's backlog counted",
    ),
    Fault(
        name="stalled-client-never-cut-off",
        path="pipeline/live.py",
        find="        if loop.time() >= deadline:\n            reset(transport)\n            return\n",
        replace="        if loop.time() >= deadline:\n            return\n",
        tests=(_SLOW + "[ws-1500KB]",),
        guarantee="A client that stops reading is closed within 30 s, even one that cannot read its close",
    ),
    Fault(
        name="streams-not-capped",
        path="pipeline/bounds.py",
        find="        if self.used >= limit:\n",
        replace="        if False:\n",
        tests=(_HOSTILE + "test_open_streams_are_capped_before_the_upgrade_and_before_the_stream",),
        guarantee="Open streams per process are capped (503 past the cap)",
    ),
    Fault(
        name="bodies-in-flight-not-bounded",
        path="pipeline/bounds.py",
        find="        if self.reserved + size > limit:\n",
        replace="        if False:\n",
        tests=(_HOSTILE + "test_bodies_in_flight_are_bounded_with_503_before_reading",),
        guarantee="Request bodies in flight are bounded (503 + Retry-After beyond)",
    ),
    Fault(
        name="head-events-subscribes",
        path="pipeline/live.py",
        find='    if request.method == "HEAD":\n',
        replace="    if False:\n",
        tests=(_HOSTILE + "test_head_events_answers_headers_and_ends",),
        guarantee="HEAD /events answers headers and ends",
    ),
    Fault(
        name="ingest-body-never-times-out",
        path="pipeline/ingest.py",
        find="BODY_TIMEOUT_S = 30.0",
        replace="BODY_TIMEOUT_S = 3600.0",
        tests=(_HOSTILE + "test_a_body_that_stops_arriving_is_408_and_nothing_is_stored",),
        guarantee="An ingest body that stops arriving is 408 after 30 s, and nothing of it is stored",
    ),
    Fault(
        name="session-body-never-times-out",
        path="pipeline/access.py",
        find="_SESSION_BODY_TIMEOUT_S = 10.0",
        replace="_SESSION_BODY_TIMEOUT_S = 3600.0",
        tests=(_HOSTILE + "test_a_body_that_stops_arriving_is_408_and_nothing_is_stored",),
        guarantee="A sign-in body that stops arriving is 408 after 10 s",
    ),
]
