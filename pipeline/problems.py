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
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})


def problem_document(status: int, detail: str, extensions: Mapping[str, object] | None = None) -> bytes:
    """The JSON of a problem. ``type`` is "about:blank": the status says what kind of problem
    it is and ``title`` is the status phrase (RFC 9457 §4.2.1); ``detail`` explains;
    ``extensions`` are extra members (RFC 9457 §3.2)."""
    return orjson.dumps(
        {
            **(extensions or {}),
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        }
    )


def problem_response(
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, object] | None = None,
) -> Response:
    """A problem+json response (see :func:`problem_document`)."""
    response = Response(
        problem_document(status, detail, extensions), status=status, content_type="application/problem+json"
    )
    response.headers.update(headers or {})
    return response
