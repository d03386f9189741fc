"""app.json (Heroku's one-click deploy) declares exactly the settings the code reads."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pipeline.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
# Settings of SPEC §8 that app.json declares and other branches read (BOUNDS: MAX_STREAMS,
# MAX_BODIES_IN_FLIGHT_BYTES); not read on this branch yet.
# The lead empties this set as those branches are merged.
PENDING: set[str] = set()


def _app() -> dict[str, Any]:
    return json.loads((ROOT / "app.json").read_text())


def _read_by_the_code() -> set[str]:
    # config.py is the only reader of the environment; it reads each variable with get("NAME").
    source = (ROOT / "pipeline" / "config.py").read_text()
    return set(re.findall(r'\bget\("([A-Z][A-Z0-9_]*)"\)', source))


def _provided_by_the_platform(app: dict[str, Any]) -> set[str]:
    # Heroku sets PORT; an add-on attached "as" NAME sets NAME_URL.
    return {"PORT"} | {addon["as"] + "_URL" for addon in app["addons"]}


def test_every_setting_the_code_reads_is_declared_and_nothing_else() -> None:
    app = _app()
    read, declared, provided = _read_by_the_code(), set(app["env"]), _provided_by_the_platform(app)
    assert {"REDIS_URL", "DATABASE_URL", "PORT", "MAX_QUEUE_DEPTH"} <= read  # the parse works
    assert read - declared - provided == set(), "read by the code but not declared in app.json"
    assert declared - read - PENDING == set(), "declared in app.json but never read"
    assert declared & provided == set(), "set by the platform or an add-on: do not declare"
    assert PENDING & read == set(), "read now: remove from PENDING"


def test_declared_settings_are_described_and_their_values_are_the_defaults() -> None:
    defaults = Settings()
    for name, entry in _app()["env"].items():
        assert len(entry.get("description", "")) > 20, name
        assert entry.get("required") is False, name
        if "value" in entry:
            assert load_settings({name: entry["value"]}) == defaults, f"{name}: not the code's default"


def test_addons_formation_and_release_match_the_procfile() -> None:
    app = _app()
    plans = {addon["plan"].split(":")[0] for addon in app["addons"]}
    assert plans == {"heroku-redis", "heroku-postgresql"}
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    assert set(app["formation"]) == set(procfile) - {"release"}
    # Heroku runs the Procfile's release command on every deploy, one-click ones included.
    assert procfile["release"].strip() == "python run.py release"
    assert {"READ_TOKEN", "INGEST_TOKEN"} <= {
        n for n, e in app["env"].items() if e.get("generator") == "secret"
    }


def test_python_version_is_the_one_the_pins_are_made_for() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    assert version == "3.11"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == version
