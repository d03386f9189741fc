"""The OpenAPI 3.1 description of every HTTP route, served at ``/openapi.json``.

One source: this module. ``tests/test_openapi.py`` checks it against the running service with
schemathesis (no ``5xx``; every status, content type, header and body as described) and against
the app's route table (every route described, nothing described that is not served).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from .problems import PROBLEM_TYPES, problem_type_uri

MAX_SEQ = 2**63 - 1
INGEST_ALIASES = ("/messages", "/json_dummy", "/json_dummy/")

_PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem_response(description: str, *kinds: str | None, retry_after: bool = False) -> dict[str, Any]:
    schemas = [_ref(_problem_schema_name(kind)) for kind in kinds] or [_ref("Problem")]
    response: dict[str, Any] = {
        "description": description,
        "content": {_PROBLEM: {"schema": schemas[0] if len(schemas) == 1 else {"oneOf": schemas}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response


def _problem_schema_name(kind: str | None) -> str:
    if kind is None:
        return "Problem"
    return "".join(part.capitalize() for part in kind.split("-")) + "Problem"


def _seq_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    }


_CHANNEL_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_READ_PARAMS = [
    _seq_param("after", "Only messages with a greater `seq`."),
    _seq_param("before", "Only messages with a smaller `seq` (with `limit`: the `limit` just below it)."),
    _seq_param("limit", "At most this many messages."),
    _seq_param("tail", "The newest this many (still ascending); with `after`, the newest of those."),
]
_CHANNEL_FILTER = {
    "name": "channel",
    "in": "query",
    "required": False,
    "description": "Only these channels (repeatable); none: every channel.",
    "schema": {"type": "array", "items": _CHANNEL_NAME},
    "style": "form",
    "explode": True,
}
_CHANNEL_PATH = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "A channel: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.",
    "schema": _CHANNEL_NAME,
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key and body within 24 h return the same id and store once.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}


def _ingest(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": "The body is parsed as strict JSON whatever the `Content-Type`, except "
        "`application/x-ndjson`: a batch of up to 1,000 documents, one per line, all or nothing "
        "(SPEC §12).",
        "security": [{}, {"ingestToken": []}],
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "description": "Any JSON document (kept as the exact text sent).",
            "content": {
                "application/json": {"schema": {}},
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "description": "One JSON document per line (ending at `\\n`; blank lines skipped).",
                },
            },
        },
        "responses": {
            "202": {
                "description": "Queued; it will be stored exactly once (a batch: every document, in "
                "line order, in one transaction).",
                "headers": {
                    "Location": {
                        "description": "`/messages/<id>` (not for a batch)",
                        "schema": {"type": "string"},
                    }
                },
                "content": {
                    "application/json": {"schema": {"oneOf": [_ref("Accepted"), _ref("AcceptedBatch")]}}
                },
            },
            "400": _problem_response(
                "Empty body, malformed JSON, invalid UTF-8, NaN/Infinity, too deep; a bad Idempotency-Key."
            ),
            "401": _problem_response("INGEST_TOKEN is set and the bearer token is missing or wrong."),
            "403": _problem_response("A browser request from an origin that is not allowed."),
            "408": _problem_response("The body did not arrive within 30 seconds."),
            "413": _problem_response("The body is larger than MAX_BODY_BYTES; a batch of more than 1,000."),
            "422": _problem_response("The Idempotency-Key was used with another body."),
            "503": _problem_response(
                "Nothing was queued (queue-full, queue-behind for a batch, or redis-unavailable), or "
                "it cannot be told (outcome-unknown: resend with the same Idempotency-Key).",
                "queue-full",
                "queue-behind",
                "redis-unavailable",
                "outcome-unknown",
                retry_after=True,
            ),
        },
    }


def _list(summary: str, *, channel_filter: bool) -> dict[str, Any]:
    params = [*_READ_PARAMS, *([_CHANNEL_FILTER] if channel_filter else [])]
    return {
        "summary": summary,
        "description": "Ascending `seq`, streamed; `Accept: application/x-ndjson` gives one message "
        "per line, each ending in a line feed.",
        "security": [{}, {"readToken": []}, {"session": []}],
        "parameters": params,
        "responses": {
            "200": {
                "description": "The messages.",
                "headers": {"Pipeline-Epoch": {"$ref": "#/components/headers/Pipeline-Epoch"}},
                "content": {
                    "application/json": {"schema": {"type": "array", "items": _ref("Message")}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            },
            "400": _problem_response("A malformed query parameter."),
            "401": _problem_response("READ_TOKEN is set and no valid token or session came."),
            "503": _problem_response(
                "The database did not answer.", "database-unavailable", retry_after=True
            ),
        },
    }


def _one(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{}, {"readToken": []}, {"session": []}],
        "parameters": [
            {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "A message id (a UUID).",
                "schema": {"type": "string"},
            }
        ],  # fmt: skip
        "responses": {
            "200": {"description": "Stored.", "content": {"application/json": {"schema": _ref("Message")}}},
            "202": {
                "description": "Accepted but not stored yet (`queued`), or its store gave up (`failed`).",
                "content": {"application/json": {"schema": {"oneOf": [_ref("Queued"), _ref("Failed")]}}},
            },
            "401": _problem_response("READ_TOKEN is set and no valid token or session came."),
            "404": _problem_response("No message has this id."),
            "503": _problem_response(
                "Redis or the database did not answer.",
                "database-unavailable",
                "redis-unavailable",
                retry_after=True,
            ),
        },
    }


# SPEC §10, as the stream descriptions say it.
_CONTINUITY = (
    "A resume (`after`, `Last-Event-ID`) across messages deleted by retention first gets `gap` "
    '`{"after": <its seq>, "next_seq": <first kept seq it will receive>|null}`; one against '
    "another database's `epoch`, or from a `seq` above the highest ever assigned, gets `reset` "
    '`{"epoch": "<id>"}` (SSE: with `id: 0`) and then everything from the start (a `gap` first '
    "if the start was purged)."
)


def _stream(summary: str, description: str, *, sse: bool) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        _seq_param("after", "Resume: first every stored message with a greater `seq`, then live ones."),
        _CHANNEL_FILTER,
        {"name": "epoch", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "The database epoch the client last saw; another one gives a `reset` event."},
    ]  # fmt: skip
    if sse:
        params.append(
            {"name": "Last-Event-ID", "in": "header", "required": False,
             "description": "Resume after this `seq` (sent by EventSource when it reconnects).",
             "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}}
        )  # fmt: skip
        ok = {
            "200": {
                "description": "An endless `text/event-stream`: `id: <seq>`, `event: message`, "
                "`data: <message>`; `: ping` comments; `event: gap` / `event: reset`. " + _CONTINUITY,
                "headers": {"Pipeline-Epoch": {"$ref": "#/components/headers/Pipeline-Epoch"}},
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        }
    else:
        ok = {
            "101": {
                "description": 'Switched to WebSocket: text frames `{"event": "message"|"ping"|'
                '"gap"|"reset", "data": ...}`; close 1013 when too slow, 1001 when the server stops. '
                'Pings: `{"seq": <latest>, "epoch": "<id>"}`. ' + _CONTINUITY
            },
            "400": _problem_response("Not a WebSocket handshake, or a malformed `after` or `channel`."),
        }
    return {
        "summary": summary,
        "description": description,
        "security": [{}, {"readToken": []}, {"session": []}],
        "parameters": params,
        "responses": {
            "400": _problem_response("A malformed `after`, `Last-Event-ID` or `channel`."),
            **ok,
            "401": _problem_response("READ_TOKEN is set and no valid token or session came."),
            "403": _problem_response("A browser page from an origin that is not allowed."),
            "503": _problem_response("Too many open streams on this process.", retry_after=True),
        },
    }


def _simple(summary: str, media: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {"200": {"description": summary, "content": {media: {"schema": schema}}}, **more},
    }


def _schemas() -> dict[str, Any]:
    timestamp = {"type": "string", "pattern": "^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{6}Z$"}
    uuid = {"type": "string", "format": "uuid"}
    schemas: dict[str, Any] = {
        "Message": {
            "type": "object",
            "required": ["id", "seq", "payload", "received_at", "persisted_at"],
            "properties": {
                "id": uuid,
                "seq": {"type": "integer", "minimum": 1},
                "channel": _CHANNEL_NAME,
                "payload": {"description": "The JSON document exactly as sent."},
                "received_at": timestamp,
                "persisted_at": timestamp,
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "status", "received_at"],
            "properties": {"id": uuid, "status": {"const": "queued"}, "received_at": timestamp},
        },
        "AcceptedBatch": {
            "type": "object",
            "required": ["ids", "status", "received_at"],
            "properties": {
                "ids": {"type": "array", "items": uuid, "minItems": 1, "maxItems": 1000},
                "status": {"const": "queued"},
                "received_at": timestamp,
            },
        },
        "Queued": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {"id": uuid, "status": {"const": "queued"}},
        },
        "Failed": {
            "type": "object",
            "required": ["id", "status", "error"],
            "properties": {"id": uuid, "status": {"const": "failed"}, "error": {"type": "string"}},
        },
        "Health": {
            "type": "object",
            "required": ["status", "redis", "database", "worker", "live"],
            "properties": {
                "status": {"enum": ["ok", "degraded", "unavailable"]},
                "redis": _ok_object(),
                "database": _ok_object(latest_seq={"type": "integer", "minimum": 0}),
                "worker": _ok_object(),
                "live": {"type": "object"},
                "queue": {
                    "type": "object",
                    "required": ["queued", "failed", "oldest_age_s"],
                    "properties": {
                        "queued": {"type": "integer", "minimum": 0},
                        "failed": {"type": "integer", "minimum": 0},
                        "oldest_age_s": {"type": ["number", "null"], "minimum": 0},
                    },
                },
                "retention": {
                    "type": "object",
                    "required": ["max_messages", "max_age_s"],
                    "properties": {
                        "max_messages": {"type": ["integer", "null"], "minimum": 1},
                        "max_age_s": {"type": ["number", "null"], "minimum": 1},
                    },
                },
            },
        },
        "Channel": {
            "type": "object",
            "required": ["name", "count", "latest_seq", "latest_at"],
            "properties": {
                "name": _CHANNEL_NAME,
                "count": {"type": "integer", "minimum": 0},
                "latest_seq": {"type": "integer", "minimum": 0},
                "latest_at": {"type": ["string", "null"]},
            },
        },
        "Session": {
            "type": "object",
            "required": ["signed_in", "read_token_required", "ingest_token_required", "expires_at"],
            "properties": {
                "signed_in": {"type": "boolean"},
                "read_token_required": {"type": "boolean"},
                "ingest_token_required": {"type": "boolean"},
                "expires_at": {"type": ["string", "null"]},
            },
        },
        "ProblemType": {
            "type": "object",
            "required": ["type", "title", "description"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "description": {"type": "string"},
            },
        },
        "Problem": {
            "description": "RFC 9457. `type` is `about:blank` (the status says it all) or one of the "
            "problem types below, each a URI on this service that describes it.",
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"enum": ["about:blank", *(problem_type_uri(kind) for kind in PROBLEM_TYPES)]},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
            },
        },
    }
    for kind, (title, description) in PROBLEM_TYPES.items():
        schemas[_problem_schema_name(kind)] = {
            "description": f"`{problem_type_uri(kind)}`: {description}",
            "allOf": [
                _ref("Problem"),
                {"properties": {"type": {"const": problem_type_uri(kind)}, "title": {"const": title}}},
            ],
        }
    schemas["OutcomeUnknownProblem"]["allOf"][1]["properties"]["outcome"] = {"const": "unknown"}
    return schemas


def _ok_object(**more: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}, **more},
    }


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    ingest = {"post": _ingest("Accept one JSON document"), "put": _ingest("Accept one JSON document")}
    paths: dict[str, Any] = {}
    for path in INGEST_ALIASES:
        paths[path] = {"get": _list("Every stored message", channel_filter=True), **ingest}
    for path in ("/messages/{id}", "/json_dummy/{id}"):
        paths[path] = {"get": _one("One message, in any channel")}
    channel_ingest = {
        method: {**_ingest(f"Accept one JSON document into a channel ({method.upper()})"),
                 "parameters": [_CHANNEL_PATH, _IDEMPOTENCY_KEY]}
        for method in ("post", "put")
    }  # fmt: skip
    paths["/channels"] = {
        "get": {
            "summary": "Every channel holding messages",
            "security": [{}, {"readToken": []}, {"session": []}],
            "responses": {
                "200": {
                    "description": "One entry per channel.",
                    "content": {"application/json": {"schema": {"type": "array", "items": _ref("Channel")}}},
                },
                "401": _problem_response("READ_TOKEN is set and no valid token or session came."),
                "503": _problem_response(
                    "The database did not answer.", "database-unavailable", retry_after=True
                ),
            },
        }
    }
    channel_list = _list("The messages of one channel", channel_filter=False)
    channel_list["parameters"] = [_CHANNEL_PATH, *channel_list["parameters"]]
    channel_list["responses"]["400"] = _problem_response("A malformed channel name or query parameter.")
    paths["/channels/{name}/messages"] = {"get": channel_list, **channel_ingest}
    ws = "A WebSocket of stored messages as they land (resume with `?after=`)."
    paths["/ws"] = {"get": _stream("Live messages over WebSocket", ws, sse=False)}
    paths["/json_dummy_ws"] = {"get": _stream("Live messages over WebSocket (alias of /ws)", ws, sse=False)}
    paths["/events"] = {
        "get": _stream(
            "Live messages as Server-Sent Events",
            "Resume with `Last-Event-ID` or `?after=`.",
            sse=True,
        )
    }
    paths["/session"] = {
        "get": _simple(
            "Whether this browser is signed in (always open)", "application/json", _ref("Session")
        ),
        "post": {
            "summary": "Sign in with a read token: sets the HttpOnly session cookie",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["token"],
                            "properties": {"token": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": {
                "204": {
                    "description": "Signed in.",
                    "headers": {"Set-Cookie": {"schema": {"type": "string"}, "required": True}},
                },
                "400": _problem_response('The body is not `{"token": "..."}`.'),
                "401": _problem_response("Not a read token."),
                "403": _problem_response("A browser request from an origin that is not allowed."),
                "408": _problem_response("The body did not arrive within 10 seconds."),
                "413": _problem_response("The body is over 4,096 bytes."),
                "415": _problem_response("The body is not `Content-Type: application/json`."),
            },
        },
        "delete": {
            "summary": "Sign out: clears the session cookie",
            "responses": {
                "204": {"description": "Signed out."},
                "403": _problem_response("A browser request from an origin that is not allowed."),
            },
        },
    }
    paths["/healthz"] = {
        "get": {
            "summary": "Liveness and dependencies (no message content)",
            "responses": {
                "200": {
                    "description": "Working.",
                    "content": {"application/json": {"schema": _ref("Health")}},
                },
                "503": {
                    "description": "Redis, the database or the worker is missing.",
                    "content": {"application/json": {"schema": _ref("Health")}},
                },
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "The whole pipeline's metrics, Prometheus text format",
            "security": [{}, {"readToken": []}, {"session": []}],
            "responses": {
                "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _problem_response("READ_TOKEN is set and no valid token or session came."),
                "403": _problem_response("A browser request from an origin that is not allowed."),
                "404": _problem_response("Metrics are turned off (METRICS=0)."),
                "503": _problem_response("Redis did not answer.", "redis-unavailable", retry_after=True),
            },
        }
    }
    paths["/openapi.json"] = {"get": _simple("This document", "application/json", {"type": "object"})}
    paths["/problems/{kind}"] = {
        "get": {
            "summary": "What a problem `type` means",
            "parameters": [{"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "The problem type.",
                    "content": {"application/json": {"schema": _ref("ProblemType")}},
                },
                "401": _problem_response("READ_TOKEN is set and no valid token or session came."),
                "404": _problem_response("No such problem type."),
            },
        }
    }
    paths["/"] = {"get": _simple("The live page", "text/html", {"type": "string"})}
    paths["/static/{filename}"] = {
        "get": {
            "summary": "The page's scripts and styles",
            "parameters": [
                {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                "404": _problem_response("No such file."),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Live JSON pipeline",
            "version": "1",
            "description": "Send any JSON document; it is queued, stored and pushed live to every "
            "open page. Errors are RFC 9457 problem+json; the problem types are listed under "
            "components.schemas (`*Problem`) and answered at `/problems/<kind>`.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "headers": {
                "Pipeline-Epoch": {
                    "description": "The database's epoch: an id made once when its tables were "
                    "created; another one means the database was replaced (SPEC §10).",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "securitySchemes": {
                "ingestToken": {"type": "http", "scheme": "bearer", "description": "INGEST_TOKEN (writes)"},
                "readToken": {"type": "http", "scheme": "bearer", "description": "READ_TOKEN (reads)"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "pipeline_session",
                    "description": "Set by POST /session.",
                },
            },  # fmt: skip
        },
    }


@cache
def document_bytes() -> bytes:
    """The document as JSON (built once per process)."""
    return orjson.dumps(document())
