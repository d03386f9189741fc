"""Validating bodies and the message representation (pure functions, no services needed)."""

from __future__ import annotations

import json

import pytest

from pipeline.messages import InvalidBody, Message, channel_of, pack, parse_body, render, seq_of, unpack

MESSAGE = Message(
    "0b8f2c9e-5d3a-4c1b-9e7f-1a2b3c4d5e6f",
    17,
    '{"a": 1.0}',
    "2026-11-27T20:39:01.123456Z",
    "2026-11-27T20:39:01.130001Z",
)


def test_parse_keeps_the_text_exactly_but_outer_whitespace() -> None:
    body = b' \n{"z": 1.0, "a": 123456789012345678901234567890, "e": "\\u00e9"}\r\n'
    assert parse_body(body) == '{"z": 1.0, "a": 123456789012345678901234567890, "e": "\\u00e9"}'


@pytest.mark.parametrize("body", [b"", b"nul", b"[1,]", b"NaN", b"[" * 1025 + b"]" * 1025, b"\xc3\x28"])
def test_parse_rejects(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        parse_body(body)


@pytest.mark.parametrize("inner", [b"1", b"1e999"])  # orjson, and the path for huge numbers
@pytest.mark.parametrize(("opener", "closer"), [(b"[", b"]"), (b'{"k":', b"}")])
def test_nesting_bound_is_512_on_every_path(opener: bytes, closer: bytes, inner: bytes) -> None:
    for depth in (511, 512):
        assert parse_body(opener * depth + inner + closer * depth)
    with pytest.raises(InvalidBody, match="nested deeper"):
        parse_body(opener * 513 + inner + closer * 513)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = b"[" * 500 + b'"' + b"[{" * 600 + b'\\"[' + b'"' + b"]" * 500
    assert parse_body(text)


def test_render_is_json_with_the_payload_spliced_in() -> None:
    text = render(MESSAGE)
    assert json.loads(text) == {
        "id": MESSAGE.id,
        "seq": 17,
        "channel": "default",
        "payload": {"a": 1.0},
        "received_at": MESSAGE.received_at,
        "persisted_at": MESSAGE.persisted_at,
    }
    assert '"payload":{"a": 1.0},' in text
    assert seq_of(text) == 17
    assert list(json.loads(text)) == ["id", "seq", "channel", "payload", "received_at", "persisted_at"]
    assert channel_of(text) == "default"
    assert channel_of(render(MESSAGE._replace(channel="Orders-2.x_y"))) == "Orders-2.x_y"


def test_pack_and_unpack_round_trip_texts_with_line_breaks() -> None:
    texts = [render(MESSAGE), render(MESSAGE._replace(seq=18, payload="[\n1\n]"))]
    assert unpack(pack(texts)) == texts
    assert [seq_of(text) for text in unpack(pack(texts))] == [17, 18]
