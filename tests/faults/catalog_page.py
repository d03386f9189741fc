"""Faults in the page (static/): each breaks a promise of SPEC §4–§5 that a browser test keeps."""

from __future__ import annotations

from tests.faults import Fault

PAGE = "tests/test_page.py"

FAULTS: list[Fault] = [
    Fault(
        name="page-payload-as-html",
        path="static/list.js",
        find='pre.textContent = text || "(no payload)";',
        replace='pre.innerHTML = text || "(no payload)";',
        tests=(
            f"{PAGE}::test_hostile_payloads_render_as_text[with-csp]",
            f"{PAGE}::test_hostile_payloads_render_as_text[csp-bypassed]",
        ),
        guarantee="a payload is shown as text, never run as HTML",
    ),
    Fault(
        name="page-resumes-without-after",
        path="static/stream.js",
        find="let url = `${path}?after=${this.opts.after()}`;",
        replace="let url = `${path}?from=page`;",
        tests=(f"{PAGE}::test_page_resumes_after_the_service_restarts",),
        guarantee="the page resumes from its last seq: nothing stored while it was away is missed",
    ),
    Fault(
        name="page-keeps-duplicates",
        path="static/app.js",
        find="if (m.seq <= this.lastSeq) return;   // already on the page (streams overlapping)",
        replace="",
        tests=(f"{PAGE}::test_moves_back_to_websocket_when_it_works_again",),
        guarantee="moving from SSE back to WebSocket shows no message twice",
    ),
    Fault(
        name="page-raw-view-reserialises",
        path="static/list.js",
        find="let text = item.raw;",
        replace="let text = JSON.stringify(JSON.parse(item.raw));",
        tests=(f"{PAGE}::test_raw_view_shows_the_text_as_stored",),
        guarantee="the raw view shows the payload exactly as stored (duplicate keys, 1.0, big numbers)",
    ),
    Fault(
        name="page-copy-reserialises",
        path="static/list.js",
        find='copyText(button, item.raw, "Copy");',
        replace='copyText(button, JSON.stringify(JSON.parse(item.raw)), "Copy");',
        tests=(f"{PAGE}::test_copy_payload_and_copy_as_curl",),
        guarantee="copy puts the exact stored text on the clipboard",
    ),
    Fault(
        name="page-history-screen-delay",
        path="static/list.js",
        find="screenMs: live ? nowMs - received : null,",
        replace="screenMs: Date.now() - received,",
        tests=(f"{PAGE}::test_message_sent_over_http_appears_live[default-websocket]",),
        guarantee="receipt → screen delay is shown only for messages that arrived live",
    ),
]
