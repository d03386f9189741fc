"""The fault-injection check: each guarantee, broken on purpose, must make its test fail.

``python -m tests.faults`` copies the repository to a temporary folder per fault, applies the
fault (a text replacement in one file), runs only the tests that claim to catch it, and prints a
table: fault, tests, caught, seconds. Every fault must be caught.

Faults live in ``catalog_<area>.py`` modules beside this one, each defining ``FAULTS``: a list
of :class:`Fault`. One module per area keeps the lists apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """One deliberate bug: replace ``find`` (which must occur exactly once) in ``path``."""

    name: str  # short, unique: "enqueue-deadline-removed"
    path: str  # file relative to the repository root: "pipeline/bus.py"
    find: str  # exact text in the file, occurring exactly once
    replace: str  # what it becomes
    tests: tuple[str, ...]  # pytest node ids that must fail with the fault in
    guarantee: str = ""  # the promise it breaks, as the README's Guarantees table says it
    # Further (find, replace) pairs in the same file, each also occurring exactly once, for a
    # fault that needs more than one edit ("drop the unique index AND the ON CONFLICT").
    more: tuple[tuple[str, str], ...] = ()
