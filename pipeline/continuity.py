"""Honest continuity (SPEC §10): what a resuming stream is told before its messages.

- ``reset`` ``{"epoch": "<id>"}``: the client asked for another database's epoch (``?epoch=``;
  the database was replaced) or resumes from a ``seq`` above the highest ever stored; the stream
  then starts again from the beginning instead of waiting for numbers that will never come.
- ``gap`` ``{"after": <seq>, "next_seq": <seq>|null}``: messages of the stream's channels after
  the client's ``seq`` were deleted by retention; ``next_seq`` is the first kept one it will now
  receive (null: none is stored yet). Retention deletes a prefix of each channel in ``seq`` order
  and records the highest ``seq`` it took (``Store.after_noting_purges`` reads it in the same
  snapshot as each replay page), so a gap is announced exactly when one exists, even when a purge
  runs during the replay.

Both are control events, not messages: their :class:`Delivery` has ``seq`` -1, so nothing
counts them as a position in the stream. The SSE ``reset`` carries ``id: 0``, so a browser that
reconnects after it resumes from the new beginning rather than from the old database's ``seq``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

import orjson

from .hub import Delivery, deliveries, websocket_frame
from .store import Store

REPLAY_PAGE = 1000
CONTROL_SEQ = -1


def _control(event: str, data: dict[str, object], sse_id: str | None = None) -> Delivery:
    text = orjson.dumps(data).decode()
    ws_text = f'{{"event":"{event}","data":{text}}}'
    id_line = "" if sse_id is None else f"id: {sse_id}\n"
    sse_frame = f"{id_line}event: {event}\ndata: {text}\n\n".encode()
    return Delivery(CONTROL_SEQ, text, ws_text, websocket_frame(ws_text), sse_frame, "")


def gap(after: int, next_seq: int | None) -> Delivery:
    """The ``gap`` event: messages after ``after`` were purged; ``next_seq`` comes next."""
    return _control("gap", {"after": after, "next_seq": next_seq})


def reset(epoch: str) -> Delivery:
    """The ``reset`` event: the stream starts again from the beginning of database ``epoch``."""
    return _control("reset", {"epoch": epoch}, sse_id="0")


async def opening(
    store: Store, epoch: str, after: int | None, asked_epoch: str | None
) -> tuple[list[Delivery], int | None]:
    """The events a stream opens with (a reset, or none) and the ``seq`` it resumes after."""
    if asked_epoch is not None and asked_epoch != epoch:
        return [reset(epoch)], 0
    if after is not None and after > await store.latest_seq():
        return [reset(epoch)], 0
    return [], after


class Replay:
    """Reads a stream's stored messages from the database, announcing each purged range once."""

    def __init__(self, store: Store, channels: Collection[str] | None) -> None:
        self._store = store
        self._channels = channels
        self._told_through = 0  # the highest purged seq a gap event has covered

    async def pages(self, after: int) -> AsyncIterator[list[Delivery]]:
        """Batches of everything stored after ``after`` (each gap as a batch of its own)."""
        while True:
            page, purged_through = await self._store.after_noting_purges(after, REPLAY_PAGE, self._channels)
            if purged_through > max(after, self._told_through):
                self._told_through = purged_through
                yield [gap(after, page[0].seq if page else None)]
            if not page:
                return
            yield deliveries(page)
            after = page[-1].seq
