"""The OpenAPI document is true: it names every route, and the running service answers as it says
(schemathesis, over real HTTP against real web and worker processes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeline import access, front, openapi
from pipeline.app import create_app
from pipeline.config import Settings
from tests.support import Pipeline

# Endless responses: described, but a request-per-example fuzzer would wait on them for ever.
STREAMS = {"/events"}
# Deterministic generation (no seed, no example database): the same requests on every run.
MAX_EXAMPLES = 25


def _served() -> set[tuple[str, str]]:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1"))
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        path = path.replace("{message_id}", "{id}")
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                served.add((path, method.lower()))
    return served | _served_in_front() | _served_in_access()


def _served_in_front() -> set[tuple[str, str]]:
    """What the ASGI layer before Quart serves: front.ROUTES."""
    return {
        (re.sub(r"<(\w+)>", r"{\1}", path), method.lower())
        for route in front.ROUTES
        for path in route.paths
        for method in route.methods
    }


def _served_in_access() -> set[tuple[str, str]]:
    """What the access layer, outermost, answers itself: the page's sign-in."""
    return {(access.SESSION_PATH, method) for method in ("get", "post", "delete")}


def test_every_route_is_described_and_nothing_else() -> None:
    described = {(path, method) for path, item in openapi.document()["paths"].items() for method in item}
    served = _served()
    assert served - described == set(), "served but not described"
    assert described - served == set(), "described but not served"


def test_every_problem_type_is_described_and_answered(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    types = schemas["Problem"]["properties"]["type"]["enum"]
    for uri in types:
        if uri == "about:blank":
            continue
        answer = client.get(uri)
        assert answer.status_code == 200, uri
        assert answer.json()["type"] == uri
        assert any(uri in schema.get("description", "") for schema in schemas.values())


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_every_response_conforms(
    service: tuple[Pipeline, httpx.Client], tmp_path: Path
) -> None:
    _, client = service
    report = tmp_path / "events.ndjson"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        str(client.base_url).rstrip("/") + "/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        *(argument for path in sorted(STREAMS) for argument in ("--exclude-path", path)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    requests = _count_requests(report)
    print(f"schemathesis sent {requests} requests")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert requests >= 200, result.stdout[-3000:]


def _count_requests(report: Path) -> int:
    """HTTP requests schemathesis sent, from its NDJSON event report."""
    count = 0
    if report.exists():
        for line in report.read_text().splitlines():
            finished = json.loads(line).get("ScenarioFinished")
            if finished:
                count += len(finished["recorder"].get("interactions", {}))
    return count
