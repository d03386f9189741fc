"""Bulk ingest (SPEC §12): a batch of JSON documents in one request, as newline-delimited JSON.

A body sent as ``application/x-ndjson`` holds one document per line. Lines end at ``\\n`` only,
split on the bytes: the UTF-8 forms of U+2028, U+2029 and U+0085, which JSON strings may hold
raw, contain no ``\\n`` byte, so they never end a line (``str.splitlines`` would break there). A
``\\r`` before the ``\\n`` is dropped; blank lines are skipped but counted, so a line number is
the one an editor shows. Each document goes through :func:`messages.parse_body`, the same
validation a single document gets. Nothing here queues anything: all or nothing is the
caller's to keep, by queueing only what :func:`documents` returned whole.
"""

from __future__ import annotations

from .messages import InvalidBody, parse_body
from .problems import Problem

MEDIA_TYPE = "application/x-ndjson"
MAX_DOCUMENTS = 1000
_BLANK = b" \t\r"


def is_bulk(content_type: str | None) -> bool:
    """True if ``Content-Type`` names the NDJSON media type (parameters such as charset allowed)."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == MEDIA_TYPE


def documents(body: bytes) -> list[str]:
    """The batch's documents (their JSON texts), in line order.

    Raises a 400 Problem naming the first bad line (extension ``line``), or 413 past
    :data:`MAX_DOCUMENTS`.
    """
    numbered = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip(_BLANK):
            numbered.append((number, line))
    if not numbered:
        raise Problem(400, "The body holds no documents; send one JSON document per line.")
    if len(numbered) > MAX_DOCUMENTS:
        raise Problem(
            413,
            f"The batch holds {len(numbered)} documents; at most {MAX_DOCUMENTS} go in one request.",
            extensions={"documents": len(numbered), "max_documents": MAX_DOCUMENTS},
        )
    texts = []
    for number, line in numbered:
        try:
            texts.append(parse_body(line))
        except InvalidBody as exc:
            raise Problem(
                400, f"Line {number}: {exc} Nothing was queued.", extensions={"line": number}
            ) from None
    return texts
