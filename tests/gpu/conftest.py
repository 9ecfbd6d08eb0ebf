"""GPU tests (marker ``gpu``): each module skips itself unless CUDA is available.

bench/gpu_check.sh runs them on a lent GPU machine with ``RLATTN_GPU_REPORT=<dir>``; this conftest
then writes ``tests.json`` and ``tests.md`` there (outcome, seconds and message per test, plus the
figures a test records with the ``gpu_report`` fixture), so the results come back as files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1] / "bench"
if str(BENCH) not in sys.path:  # bench/gpu_models.py: the shapes the GPU check builds
    sys.path.insert(0, str(BENCH))

_RESULTS: dict[str, dict] = {}
_PREFIX = []  # this folder's node-id prefix, e.g. "tests/gpu/"


def pytest_configure(config):
    rel = os.path.relpath(HERE, config.rootpath)
    _PREFIX.append("" if rel == "." else Path(rel).as_posix() + "/")


@pytest.fixture
def gpu_report(request):
    """``gpu_report(key=value, ...)`` adds figures to this test's entry in tests.json."""
    entry = _RESULTS.setdefault(request.node.nodeid, {})

    def add(**figures):
        entry.setdefault("figures", {}).update(figures)

    return add


def pytest_runtest_logreport(report):
    if not report.nodeid.startswith(_PREFIX[0]):  # conftest hooks see the whole session
        return
    entry = _RESULTS.setdefault(report.nodeid, {})
    if report.when == "call" or report.outcome != "passed":
        entry["outcome"] = report.outcome if not hasattr(report, "wasxfail") else "xfail"
        entry["seconds"] = round(entry.get("seconds", 0.0) + report.duration, 2)
        if report.skipped and isinstance(report.longrepr, tuple):
            entry["message"] = report.longrepr[2]
        elif report.failed:
            entry["message"] = str(report.longrepr)[-2000:]


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("RLATTN_GPU_REPORT")
    if not out:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    results = {k: v for k, v in _RESULTS.items() if "outcome" in v}
    (path / "tests.json").write_text(json.dumps({"exitstatus": int(exitstatus), "finished": time.ctime(), "tests": results}, indent=1))
    lines = ["## GPU tests (`pytest -m gpu tests/gpu`)", "", "| test | outcome | s | notes |", "|---|---|---:|---|"]
    for nodeid, r in results.items():
        notes = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("figures", {}).items()]
        if r["outcome"] != "passed" and r.get("message", "").strip():
            notes.append(r["message"].strip().splitlines()[-1][:200])
        lines.append(f"| `{nodeid.split('::', 1)[-1]}` | {r['outcome']} | {r['seconds']} | {'; '.join(notes).replace('|', '/')} |")
    (path / "tests.md").write_text("\n".join(lines) + "\n")
