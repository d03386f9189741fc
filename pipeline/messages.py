"""What a message is: validating a body, the one JSON representation, and its framing on Redis.

A payload is kept as the exact text the client sent (outer whitespace aside), never re-encoded,
so ``1.0`` stays ``1.0``, big integers keep every digit and keys keep their order. Validation
only proves the text is strict JSON; the representation splices that text in as it is.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

# SPEC §3: deeper is 400, so a stored message inside its envelope (two more levels on a
# WebSocket) stays readable by Python's json at its default recursion limit, orjson (1,024) and
# browsers.
MAX_DEPTH = 512
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_OPEN = ord("(")
_SLICE = 64
# A JSON string, escapes included (for a document already known to be well formed).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_JSON_WHITESPACE = " \t\r\n"
# RFC 7464 (JSON text sequences) separates texts with RS, a byte that never occurs in JSON
# text, so a batch of rendered messages travels as one pub/sub payload without re-encoding.
_RECORD_SEPARATOR = "\x1e"
# A rendered message starts '{"id":"<36-char uuid>","seq":' so seq sits at a fixed offset.
_SEQ_OFFSET = len('{"id":"') + 36 + len('","seq":')
# Where messages go when no channel is named (the routes from before channels existed).
DEFAULT_CHANNEL = "default"


class InvalidBody(ValueError):
    """The request body is not a JSON document we accept; ``str()`` says why."""


class Message(NamedTuple):
    """One stored message, as a row of the database."""

    id: str
    seq: int
    payload: str
    received_at: str
    persisted_at: str
    # Last, with a default, so rows and tuples made before channels existed still fit.
    channel: str = DEFAULT_CHANNEL


def parse_body(body: bytes) -> str:
    """Return the body's JSON text if it is one strict JSON document, else raise InvalidBody.

    The same rules hold on both paths (orjson, and the standard parser for documents with
    numbers beyond a double): UTF-8 without a byte-order mark, no lone surrogates, no NaN or
    Infinity, nesting at most MAX_DEPTH.
    """
    if not body.strip(_JSON_WHITESPACE.encode()):
        raise InvalidBody("The body is empty; send one JSON document.")
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not str(exc).startswith("number is infinity"):
            raise InvalidBody(_describe(str(exc))) from None
        # orjson parses numbers as doubles, but a number like 1e400 is valid JSON text; we
        # keep the text, so only ask the standard parser whether the document is well formed.
        _validate_with_stdlib(body)
    else:
        _check_depth(body)
    return body.decode("utf-8").strip(_JSON_WHITESPACE)


def _validate_with_stdlib(body: bytes) -> None:
    def reject_constant(name: str) -> None:
        raise InvalidBody(f"{name} is not JSON; encode it as a string or null.")

    try:
        # Strict UTF-8 first: json.loads(bytes) would also take UTF-16/32 and encoded surrogates.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody(f"The body is not valid UTF-8 JSON text: {exc}.") from None
    if text.startswith("\ufeff"):
        raise InvalidBody("The body starts with a byte-order mark; send plain UTF-8 JSON text.")
    _check_depth(body)
    try:
        # Numbers are only checked for syntax: parsing a 5,000-digit integer would hit Python's
        # int limit (and cost quadratic time) for a value we never use.
        document = json.loads(text, parse_constant=reject_constant, parse_int=len, parse_float=len)
    except RecursionError:
        raise InvalidBody(f"The document is nested deeper than {MAX_DEPTH} levels.") from None
    except ValueError as exc:
        raise InvalidBody(f"Malformed JSON: {exc}") from None
    try:
        # The standard parser lets lone surrogates ("\\ud800") through; encoding finds them.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidBody("The body is not valid UTF-8 JSON text: it holds a lone surrogate.") from None


def _check_depth(body: bytes) -> None:
    """Raise InvalidBody if brackets nest deeper than MAX_DEPTH outside strings."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return  # the usual case, decided without scanning
    # Only the brackets outside strings, as "(" and ")"; then whole slices at C speed, looking
    # closer only at a slice that could cross the limit (a 1 MiB body stays a few milliseconds).
    brackets = _STRING.sub(b"", body).translate(_AS_PARENS, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(brackets), _SLICE):
        piece = brackets[start : start + _SLICE]
        opens = piece.count(b"(")
        if depth + opens <= MAX_DEPTH:
            depth += 2 * opens - len(piece)
            continue
        for byte in piece:
            depth += 1 if byte == _OPEN else -1
            if depth > MAX_DEPTH:
                raise InvalidBody(f"The document is nested deeper than {MAX_DEPTH} levels.")


def _describe(error: str) -> str:
    if "depth limit" in error or "recursion limit" in error:
        return f"The document is nested deeper than {MAX_DEPTH} levels."
    if "UTF-8" in error or "surrogate" in error:
        return f"The body is not valid UTF-8 JSON text: {error}."
    return f"Malformed JSON: {error}."


def new_id() -> str:
    """A fresh message id: a UUID4 in canonical text form."""
    return str(uuid.uuid4())


def canonical_id(text: str) -> str | None:
    """The canonical form of a message id, or None if ``text`` is not a UUID."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def utc_timestamp() -> str:
    """Now, as ISO 8601 UTC with microseconds and a ``Z`` ("2026-11-27T20:39:01.123456Z")."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render(message: Message) -> str:
    """The JSON text of a stored message, the same for GET, WebSocket and SSE."""
    return (
        f'{{"id":"{message.id}","seq":{message.seq},"channel":"{message.channel}",'
        f'"payload":{message.payload},'
        f'"received_at":"{message.received_at}","persisted_at":"{message.persisted_at}"}}'
    )


def seq_of(rendered: str) -> int:
    """The ``seq`` of a rendered message, read without parsing the payload."""
    return int(rendered[_SEQ_OFFSET : rendered.index(",", _SEQ_OFFSET)])


def channel_of(rendered: str) -> str:
    """The ``channel`` of a rendered message (it follows ``seq``; names need no escaping)."""
    start = rendered.index(",", _SEQ_OFFSET) + len(',"channel":"')
    return rendered[start : rendered.index('"', start)]


def pack(rendered: list[str]) -> str:
    """Join rendered messages into one RFC 7464 text sequence (for a pub/sub payload)."""
    return "".join(_RECORD_SEPARATOR + text for text in rendered)


def unpack(packed: str) -> list[str]:
    """Split what :func:`pack` joined."""
    return [text for text in packed.split(_RECORD_SEPARATOR) if text]
