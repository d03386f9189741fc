"""Channel names (SPEC §9): what a channel may be called, checked at the edge.

A name is 1 to 64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or a digit,
and case-sensitive. Names this plain can be spliced into JSON, SQL parameters and URLs as they
are: nothing in them needs escaping anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .messages import DEFAULT_CHANNEL
from .problems import Problem

__all__ = ["DEFAULT_CHANNEL", "RULE", "check", "check_filter", "is_valid"]
MAX_NAME_CHARS = 64
RULE = (
    f"a channel name is 1 to {MAX_NAME_CHARS} characters from A-Z a-z 0-9 . _ -, "
    "starting with a letter or a digit (case-sensitive)"
)
# ASCII only: \w and str.isalnum() would let other scripts' letters and digits through.
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}")


def is_valid(name: str) -> bool:
    """True if ``name`` may name a channel."""
    return _NAME.fullmatch(name) is not None


def check(name: str) -> str:
    """``name`` if it may name a channel, else a 400 Problem that states the rule."""
    if not is_valid(name):
        raise Problem(400, f"Invalid channel name {name!r}: {RULE}.", extensions={"rule": RULE})
    return name


def check_filter(names: Iterable[str]) -> frozenset[str] | None:
    """The channels a ``?channel=`` list narrows to (None: every channel), each checked."""
    chosen = frozenset(check(name) for name in names)
    return chosen or None
