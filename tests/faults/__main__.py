"""``python -m tests.faults``: put each fault into a copy of the code and see its tests fail.

First, once, the tests named by the selected faults run on an unmodified copy: a test that
fails there proves nothing when it fails with a fault in. Then, for each fault, a fresh copy
(tracked and untracked-but-not-ignored files) gets the fault, and only that fault's tests run
there with this interpreter. Caught means pytest reported failures (exit code 1); any other
non-zero exit (2-5: interrupted, internal error, usage error, nothing collected) means the fault
or its test is broken, which is reported and does not count as caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tests.faults
from tests.faults import Fault

ROOT = Path(__file__).resolve().parents[2]
_EXCLUDED_TOP = {".venv", "venv", "data", ".git"}
# One fault's tests, however slow, must end: past this the run counts as broken, not caught.
_RUN_TIMEOUT_S = 900


@dataclass
class Outcome:
    fault: Fault
    verdict: str  # "yes", "NO", or "broken: <why>"
    seconds: float
    output: str = ""

    @property
    def caught(self) -> bool:
        return self.verdict == "yes"


def load_faults() -> list[Fault]:
    """Every fault of every ``catalog_*`` module beside this one, names unique."""
    faults: list[Fault] = []
    for module in sorted(pkgutil.iter_modules(tests.faults.__path__), key=lambda m: m.name):
        if module.name.startswith("catalog_"):
            catalog = importlib.import_module(f"tests.faults.{module.name}")
            faults.extend(catalog.FAULTS)
    names = [fault.name for fault in faults]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SystemExit(f"fault names used twice: {', '.join(duplicates)}")
    return faults


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files, relative to the root (git decides)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for name in sorted(set(filter(None, listed.split("\0")))):
        path = Path(name)
        if path.parts[0] not in _EXCLUDED_TOP and (ROOT / path).is_file():
            files.append(path)
    return files


def copy_repository(files: Iterable[Path], into: Path) -> None:
    for path in files:
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)


def check_applies(fault: Fault) -> str | None:
    """Why ``fault`` cannot be applied to this tree, or None."""
    path = ROOT / fault.path
    if not path.is_file():
        return f"{fault.path} does not exist"
    text = path.read_text()
    for find, _ in ((fault.find, fault.replace), *fault.more):
        count = text.count(find)
        if count != 1:
            return f"{find!r} occurs {count} times in {fault.path} (it must occur exactly once)"
    if not fault.tests:
        return "it names no tests"
    return None


def apply(fault: Fault, copy: Path) -> None:
    path = copy / fault.path
    text = path.read_text()
    for find, replace in ((fault.find, fault.replace), *fault.more):
        assert text.count(find) == 1, fault.name
        text = text.replace(find, replace)
    path.write_text(text)


def pytest_command(node_ids: Iterable[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *node_ids]


def run_fault(fault: Fault, files: list[Path]) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fault-{fault.name}-") as scratch:
        copy = Path(scratch)
        copy_repository(files, copy)
        apply(fault, copy)
        try:
            result = subprocess.run(
                pytest_command(fault.tests, "-x"),
                cwd=copy,
                capture_output=True,
                text=True,
                timeout=_RUN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return Outcome(fault, f"broken: no result within {_RUN_TIMEOUT_S}s", time.monotonic() - started)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode == 1:
        return Outcome(fault, "yes", seconds, output)
    if result.returncode == 0:
        return Outcome(fault, "NO", seconds, output)
    return Outcome(fault, f"broken: pytest exit code {result.returncode}", seconds, output)


def baseline(faults: list[Fault], files: list[Path], jobs: int) -> dict[str, str]:
    """Run every named test once on an unmodified copy; the faults whose tests do not pass."""
    node_ids = sorted({node for fault in faults for node in fault.tests})
    shards = [node_ids[index::jobs] for index in range(jobs) if node_ids[index::jobs]]
    with tempfile.TemporaryDirectory(prefix="fault-baseline-") as scratch:
        copy = Path(scratch)
        copy_repository(files, copy)

        def run_shard(index: int) -> tuple[Path, subprocess.CompletedProcess[str]]:
            report = copy / f"baseline-{index}.xml"
            result = subprocess.run(
                pytest_command(shards[index], f"--junitxml={report}"),
                cwd=copy,
                capture_output=True,
                text=True,
                timeout=_RUN_TIMEOUT_S,
            )
            return report, result

        with ThreadPoolExecutor(max_workers=len(shards) or 1) as pool:
            results = list(pool.map(run_shard, range(len(shards))))
        outcomes: dict[str, list[bool]] = {}
        for report, result in results:
            if result.returncode not in (0, 1) or not report.exists():
                print(result.stdout + result.stderr, file=sys.stderr)
                raise SystemExit(f"the unmodified tests could not run (pytest exit {result.returncode})")
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                module = case.get("classname", "").replace(".", "/")
                node = f"{module}.py::{case.get('name')}"
                passed = not any(child.tag in ("failure", "error", "skipped") for child in case)
                outcomes.setdefault(node, []).append(passed)
            if result.returncode == 1:
                errors = [
                    line for line in result.stdout.splitlines() if line.startswith(("E ", "FAILED", "ERROR"))
                ]
                print("\n".join(errors[:40]), file=sys.stderr)

    def passes(node_id: str) -> bool:
        found = [ok for node, oks in outcomes.items() if node == node_id or node.startswith(node_id + "[")
                 for ok in oks]  # fmt: skip
        return bool(found) and all(found)

    broken: dict[str, str] = {}
    for fault in faults:
        failing = [node for node in fault.tests if not passes(node)]
        if failing:
            broken[fault.name] = "broken: fails (or is skipped) without the fault: " + ", ".join(failing)
    return broken


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| fault | file | test(s) | caught | seconds |",
        "|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        tests_ = "<br>".join(f"`{node}`" for node in outcome.fault.tests)
        lines.append(
            f"| `{outcome.fault.name}` | `{outcome.fault.path}` | {tests_} | {outcome.verdict} "
            f"| {outcome.seconds:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated fault names to run")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="faults run at once (default 1)")
    parser.add_argument("--write", type=Path, help="also write the result table (Markdown) to this file")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmodified run (not for CI)")
    options = parser.parse_args(argv)

    faults = load_faults()
    if options.only:
        wanted = [name.strip() for name in options.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {fault.name for fault in faults})
        if unknown:
            raise SystemExit(f"unknown fault(s): {', '.join(unknown)} (see --list)")
        faults = [fault for fault in faults if fault.name in wanted]
    if options.list:
        for fault in faults:
            print(f"{fault.name:40} {fault.path:24} {' '.join(fault.tests)}")
        return 0
    problems = [(fault.name, why) for fault in faults if (why := check_applies(fault)) is not None]
    if problems:
        for name, why in problems:
            print(f"fault {name!r} cannot be applied: {why}", file=sys.stderr)
        return 2

    files = repository_files()
    jobs = max(1, options.jobs)
    started = time.monotonic()
    broken = {} if options.no_baseline else baseline(faults, files, jobs)
    print(f"baseline: {len(faults) - len(broken)} of {len(faults)} faults' tests pass unmodified "
          f"({time.monotonic() - started:.0f}s)", flush=True)  # fmt: skip
    runnable = [fault for fault in faults if fault.name not in broken]

    def run_one(fault: Fault) -> Outcome:
        outcome = run_fault(fault, files)
        print(f"  {fault.name}: caught {outcome.verdict} ({outcome.seconds:.1f}s)", flush=True)
        if not outcome.caught:
            print(outcome.output[-4000:], flush=True)
        return outcome

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        ran = {outcome.fault.name: outcome for outcome in pool.map(run_one, runnable)}
    outcomes = [ran.get(fault.name) or Outcome(fault, broken[fault.name], 0.0) for fault in faults]
    result = table(outcomes)
    print()
    print(result)
    missed = [outcome.fault.name for outcome in outcomes if not outcome.caught]
    print(
        f"\n{len(outcomes) - len(missed)} of {len(outcomes)} faults caught "
        f"in {time.monotonic() - started:.0f}s" + (f"; NOT caught: {', '.join(missed)}" if missed else "")
    )
    if options.write is not None:
        write_report(options.write, result, outcomes, time.monotonic() - started, jobs)
    return 1 if missed else 0


def _machine() -> str:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"commit {commit or '?'}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (load average at the end {load}), Python {sys.version.split()[0]}"
    )


def write_report(path: Path, result: str, outcomes: list[Outcome], seconds: float, jobs: int) -> None:
    caught = sum(outcome.caught for outcome in outcomes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Fault-injection check\n\n"
        "Written by `python -m tests.faults --write docs/faults.md`: each fault is put into a copy of\n"
        "the code, only the tests that claim to catch it run there, and they must fail. The same\n"
        "tests first pass on the unmodified code. Faults are listed in `tests/faults/catalog_*.py`.\n\n"
        f"{caught} of {len(outcomes)} caught; {seconds:.0f} s with `-j {jobs}` on {_machine()}.\n\n"
        f"{result}\n\n## What each fault breaks\n\n"
        + "\n".join(f"- `{outcome.fault.name}`: {outcome.fault.guarantee}" for outcome in outcomes)
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
