"""Error answers as RFC 9457 problem details (``application/problem+json``)."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import orjson
from quart import Response


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, object] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})
        self.kind = kind  # a key of PROBLEM_TYPES, or None for "about:blank"


# Problems whose status alone does not say what happened get a ``type`` of their own (RFC 9457
# §3.1.1): a URI on this service, which answers it with this description (and the OpenAPI
# document lists them all). Kind -> (title, description).
PROBLEM_TYPES: dict[str, tuple[str, str]] = {
    "queue-full": (
        "Queue full",
        "More messages are queued or being stored than MAX_QUEUE_DEPTH allows: the write was "
        "refused and nothing was queued. Retry after the Retry-After delay.",
    ),
    "queue-behind": (
        "Storage behind",
        "A bulk write (SPEC §12) was refused because the oldest queued message has waited longer "
        "than storage allows (100 ms): nothing was queued. Retry after the Retry-After delay.",
    ),
    "redis-unavailable": (
        "Redis unavailable",
        "Redis (the queue) refused, is down or did not answer in time: nothing was queued. "
        "Retry after the Retry-After delay.",
    ),
    "database-unavailable": (
        "Database unavailable",
        "The database did not answer: nothing was read. Retry after the Retry-After delay.",
    ),
    "outcome-unknown": (
        "Outcome unknown",
        "Redis stopped answering while the message was being queued, so it may or may not have "
        "been queued. Send it again with the same Idempotency-Key to have it stored exactly once.",
    ),
}


def problem_type_uri(kind: str | None) -> str:
    """The ``type`` of a problem of ``kind`` ("about:blank" when the status says it all)."""
    if kind is None:
        return "about:blank"
    assert kind in PROBLEM_TYPES, kind
    return f"/problems/{kind}"


def problem_document(
    status: int, detail: str, extensions: Mapping[str, object] | None = None, kind: str | None = None
) -> bytes:
    """The JSON of a problem. Without a ``kind``, ``type`` is "about:blank": the status says what
    kind of problem it is and ``title`` is the status phrase (RFC 9457 §4.2.1); ``detail``
    explains; ``extensions`` are extra members (RFC 9457 §3.2)."""
    return orjson.dumps(
        {
            **(extensions or {}),
            "type": problem_type_uri(kind),
            "title": PROBLEM_TYPES[kind][0] if kind else HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        }
    )


def problem_response(
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, object] | None = None,
    kind: str | None = None,
) -> Response:
    """A problem+json response (see :func:`problem_document`)."""
    response = Response(
        problem_document(status, detail, extensions, kind),
        status=status,
        content_type="application/problem+json",
    )
    response.headers.update(headers or {})
    return response
