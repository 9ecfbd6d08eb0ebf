"""Shared fixtures for the reward tests: one grader (two worker processes) for the whole session."""

import threading

import pytest

from rlattn.rewards import BoundedGrader


@pytest.fixture(scope="session")
def grader():
    g = BoundedGrader(num_workers=2, timeout=10.0)
    yield g
    g.close()


def _run_bounded(fn, limit_s: float = 60.0):
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        pytest.fail(f"call did not return within {limit_s} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def bounded():
    """``bounded(fn, limit_s=60)``: run ``fn()`` in a non-main thread, fail if it has not returned.

    A guard against hangs, not a speed assertion: the bound is far above the grader's timeouts.
    It also exercises grading off the main thread, where math-verify's own timeouts break.
    """
    return _run_bounded
