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


def problem_response(
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, object] | None = None,
) -> Response:
    """A problem+json response. ``type`` is "about:blank": the status says what kind of
    problem it is and ``title`` is the status phrase (RFC 9457 §4.2.1); ``detail`` explains;
    ``extensions`` are extra members (RFC 9457 §3.2)."""
    body = {
        **(extensions or {}),
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    response = Response(orjson.dumps(body), status=status, content_type="application/problem+json")
    response.headers.update(headers or {})
    return response
