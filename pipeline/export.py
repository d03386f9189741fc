"""How ``GET /messages`` frames its rows: one JSON array, or NDJSON (one message per line)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Framing:
    """The bytes around and between rendered messages."""

    content_type: str
    start: bytes
    separator: str
    terminator: str
    between: str  # before a chunk that follows another
    end: bytes

    def join(self, rendered: Iterable[str]) -> str:
        """Rendered messages as one chunk."""
        if self.terminator:
            return "".join(_one_line(text) + self.terminator for text in rendered)
        return self.separator.join(rendered)


def _one_line(text: str) -> str:
    # A payload keeps its own whitespace, which may break lines between tokens (inside a JSON
    # string a line break is always escaped): on a line of its own it becomes spaces.
    if "\n" in text or "\r" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


JSON_ARRAY = Framing("application/json", b"[", ",", "", ",", b"]")
# One message per line, every line ending in "\n" (the last one too), nothing else.
NDJSON_LINES = Framing(NDJSON, b"", "", "\n", "", b"")


def framing(accept: str | None) -> Framing:
    """NDJSON when the ``Accept`` header asks for it (with q > 0), else the JSON array."""
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() == NDJSON and not any(_zero_quality(param) for param in params):
            return NDJSON_LINES
    return JSON_ARRAY


def _zero_quality(param: str) -> bool:
    name, _, value = param.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False
