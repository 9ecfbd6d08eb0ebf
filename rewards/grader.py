"""Bounded math grading: math-verify in worker processes that are killed when they hang.

Why: math-verify's own timeouts use ``signal.alarm``. Off the main thread (async reward
workers, thread pools, some launchers) ``parse``/``verify`` then raise, and rewards silently
become 0; and a sympy call that hangs (``2^{2^{100}}``, braces nested twenty deep) cannot be
interrupted from inside its thread at all. So rlattn never uses those timeouts
(``parse(..., parsing_timeout=None)``, ``verify(..., timeout_seconds=None)``) and bounds the
work from outside instead:

- :class:`BoundedGrader` keeps ``num_workers`` persistent worker processes. Each is a fresh
  interpreter (``subprocess`` fork+exec: spawn semantics, so safe with a parent full of torch
  threads, and unlike ``multiprocessing``'s spawn it does not re-import the training script's
  ``__main__`` into every worker). The worker imports math-verify once and answers requests
  over a pipe.
- :meth:`BoundedGrader.grade` sends one ``(gold, pred)`` pair and waits at most ``timeout``
  seconds. On timeout the worker is killed (SIGKILL), a replacement is started, and the result
  is ``None`` ("cannot verify"). A worker that dies is replaced the same way. Works from any
  thread, and from several threads at once.
- :meth:`BoundedGrader.grade_batch` grades many pairs on all workers in parallel, with the same
  per-pair bound, de-duplicating identical pairs (a GRPO group often repeats an answer).
- Cheap pre-checks refuse absurd inputs before any worker sees them (see :class:`GradeLimits`).
  A refused *prediction* grades ``False`` (an answer nobody can check is not a correct answer,
  and it costs no worker); a refused *gold* grades ``None`` (the reference is unusable).
- Workers start lazily on first use; :meth:`BoundedGrader.close` (also run at exit) stops them.
  Each worker caps its address space (``max_memory_mb``) so a runaway computation fails with
  MemoryError instead of swapping the machine.

Result values: ``True`` / ``False`` from math-verify (gold first: ``verify(parse(gold),
parse(pred))``), ``None`` on timeout, worker death or an unusable gold. ``grade`` never raises
for bad inputs; it raises ``RuntimeError`` only when the workers cannot start at all
(math-verify missing) or the grader was closed.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Iterable

__all__ = ["BoundedGrader", "GradeLimits", "check_limits", "get_default_grader", "close_default_grader"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Pre-checks
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradeLimits:
    """What a string handed to math-verify may look like; anything beyond is refused unseen.

    Measured (math-verify 0.9.0, one core): nesting costs grow fast — ten nested braces take
    ~0.9 s, sixteen ~10 s, eighteen never finish; ``\\frac`` nested twenty deep never finishes;
    ``10^{999999999}``, ``2^{2^{100}}`` and ``2**2**100`` never finish; ``1000000!`` takes ~6 s.
    The defaults keep every accepted input well under a second on those families; the worker
    timeout covers whatever else slips through.

    max_chars: longest string (the gold, or the prediction as handed to math-verify).
    max_digits: longest run of digits (a number with more digits is refused).
    max_depth: deepest nesting of ``{ ( [`` groups, counted together.
    max_exponent_digits: an exponent (after ``^`` or ``**``) may be a number of at most this
        many digits; a numeric tower ``b^{c^{d}}`` is refused when ``c^d`` exceeds
        ``10**max_exponent_digits``.
    max_factorial_digits: ``n!`` is refused when ``n`` has more digits than this.
    """

    max_chars: int = 2000
    max_digits: int = 1000
    max_depth: int = 10
    max_exponent_digits: int = 6
    max_factorial_digits: int = 5


_DIGIT_RUN = re.compile(r"\d+")
_POWER = re.compile(r"(?:\^|\*\*)")
# At a power operator: an optional opening group, a number, then optionally a power of that number.
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*(\d+)(?:\s*(?:\^|\*\*)\s*[{(]?\s*(\d+))?")
_FACTORIAL = re.compile(r"(\d+)\s*!")


def check_limits(text: str, limits: GradeLimits) -> str | None:
    """Why ``text`` is refused (a short reason), or None when it may be graded. Linear time."""
    if len(text) > limits.max_chars:
        return f"longer than {limits.max_chars} characters"
    for run in _DIGIT_RUN.finditer(text):
        if run.end() - run.start() > limits.max_digits:
            return f"a number with more than {limits.max_digits} digits"
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]" and depth:
            depth -= 1
    if deepest > limits.max_depth:
        return f"nesting deeper than {limits.max_depth}"
    for op in _POWER.finditer(text):
        m = _EXPONENT.match(text, op.start())
        if m is None:
            continue
        exponent, inner_power = m.group(1), m.group(2)  # x^{exponent} or x^{exponent^{inner_power}}
        if len(exponent.lstrip("0")) > limits.max_exponent_digits:
            return f"an exponent with more than {limits.max_exponent_digits} digits"
        if inner_power is not None:
            base = int(exponent)
            if base > 1 and (
                len(inner_power.lstrip("0")) > limits.max_exponent_digits
                or int(inner_power) * math.log10(base) > limits.max_exponent_digits
            ):
                return "a numeric power tower with a huge exponent"
    for fact in _FACTORIAL.finditer(text):
        if len(fact.group(1).lstrip("0")) > limits.max_factorial_digits:
            return f"a factorial of a number with more than {limits.max_factorial_digits} digits"
    return None


# --------------------------------------------------------------------------------------------
# Worker side (runs in the child interpreter)
# --------------------------------------------------------------------------------------------
def _worker_main(read_fd: int, write_fd: int, max_memory_mb: int | None) -> None:
    """Serve grading requests until the parent closes the pipe. Runs in the worker process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    requests = Connection(read_fd, writable=False)
    replies = Connection(write_fd, readable=False)
    try:
        if max_memory_mb:
            try:
                import resource

                limit = int(max_memory_mb) * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            except (ImportError, ValueError, OSError):  # pragma: no cover - platform dependent
                pass
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
        from math_verify import parse, verify

        verify(parse("$1$", parsing_timeout=None), parse("$1$", parsing_timeout=None), timeout_seconds=None)
    except BaseException as exc:  # noqa: BLE001 - report any start-up failure to the parent
        replies.send_bytes(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    replies.send_bytes(b'{"ready": true}')

    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except EOFError:
            return
        try:
            gold = parse(request["gold"], parsing_timeout=None)
            pred = parse(request["pred"], parsing_timeout=None)
            result = None if not gold else bool(verify(gold, pred, timeout_seconds=None))
        except MemoryError:
            result = None
        except Exception:  # noqa: BLE001 - math-verify swallows most errors itself; be sure
            result = False
        replies.send_bytes(json.dumps({"result": result}).encode())


_BOOTSTRAP = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
    "from rlattn.rewards.grader import _worker_main; "
    "_worker_main(int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))"
)


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------
class _WorkerTimeout(Exception):
    pass


class _WorkerDied(Exception):
    pass


class _Worker:
    """One worker process and its two pipes. Used by one thread at a time (the idle queue)."""

    def __init__(self, max_memory_mb: int | None, startup_timeout: float):
        self.max_memory_mb = max_memory_mb
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.requests: Connection | None = None
        self.replies: Connection | None = None
        self.ready = False

    def start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-c", _BOOTSTRAP,
                    json.dumps(sys.path), str(req_r), str(rep_w), json.dumps(self.max_memory_mb),
                ],
                pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            for fd in (req_r, req_w, rep_r, rep_w):
                os.close(fd)
            raise
        os.close(req_r)
        os.close(rep_w)
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(rep_r, writable=False)
        self.ready = False

    def _wait_ready(self) -> None:
        if self.proc is None:
            self.start()
        if self.ready:
            return
        if not self.replies.poll(self.startup_timeout):
            self.kill()
            raise _WorkerTimeout(f"grader worker did not start within {self.startup_timeout:.0f} s")
        try:
            message = json.loads(self.replies.recv_bytes())
        except (EOFError, OSError) as exc:
            self.kill()
            raise _WorkerDied("grader worker exited during start-up") from exc
        if "error" in message:
            self.kill()
            raise RuntimeError(
                f"rlattn grader worker could not start: {message['error']}. "
                "Is math-verify installed in this interpreter (pip install 'math-verify>=0.8')?"
            )
        self.ready = True

    def run(self, gold: str, pred: str, timeout: float) -> bool | None:
        if self.proc is not None and self.proc.poll() is not None:  # died while idle: replace first
            self.kill()
        self._wait_ready()
        try:
            self.requests.send_bytes(json.dumps({"gold": gold, "pred": pred}).encode())
            if not self.replies.poll(timeout):
                raise _WorkerTimeout
            return json.loads(self.replies.recv_bytes())["result"]
        except (EOFError, OSError, ValueError, KeyError) as exc:
            self.kill()
            raise _WorkerDied(str(exc)) from exc
        except _WorkerTimeout:
            self.kill()
            raise

    def kill(self) -> None:
        """Stop the process (SIGKILL) and close the pipes; the next ``run`` starts a fresh one."""
        proc, self.proc = self.proc, None
        for conn in (self.requests, self.replies):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self.requests = self.replies = None
        self.ready = False
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
                logger.warning("grader worker pid %s did not exit after SIGKILL", proc.pid)


class BoundedGrader:
    """math-verify grading with a hard per-pair time bound, safe from any thread.

    Args:
        num_workers: worker processes (default ``min(4, os.cpu_count())``).
        timeout: default per-pair bound in seconds (``grade(..., timeout=...)`` overrides it).
        limits: pre-check limits (:class:`GradeLimits`).
        max_memory_mb: address-space cap per worker (None: no cap; ignored where unsupported).
        startup_timeout: seconds a new worker may take to import math-verify.
        cache_size: graded ``(gold, pred)`` pairs remembered in this process (True/False only).

    Picklable (only the settings travel; workers are per process), and fork-aware: a forked
    child that uses a grader it inherited starts its own workers instead of sharing the parent's.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout: float = 5.0,
        limits: GradeLimits | None = None,
        max_memory_mb: int | None = 4096,
        startup_timeout: float = 60.0,
        cache_size: int = 65536,
    ):
        if num_workers is None:
            num_workers = max(1, min(4, os.cpu_count() or 1))
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        _check_timeout("timeout", timeout)
        _check_timeout("startup_timeout", startup_timeout)
        self.num_workers = num_workers
        self.timeout = float(timeout)
        self.limits = limits if limits is not None else GradeLimits()
        self.max_memory_mb = max_memory_mb
        self.startup_timeout = float(startup_timeout)
        self.cache_size = int(cache_size)
        #: Counters since creation: graded pairs, cache hits, refused by pre-checks, timeouts, worker deaths.
        self.stats = {"graded": 0, "cached": 0, "refused": 0, "timeouts": 0, "worker_deaths": 0}
        self._init_runtime()

    # ---- lifecycle --------------------------------------------------------------------------
    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._executor: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._closed = False

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # inherited through fork: never touch the parent's workers
            self._init_runtime()
        if self._closed:
            raise RuntimeError("this BoundedGrader is closed; create a new one")
        if self._workers:
            return
        with self._lock:
            if self._workers:
                return
            workers = []
            for _ in range(self.num_workers):
                worker = _Worker(self.max_memory_mb, self.startup_timeout)
                worker.start()  # all import math-verify in parallel
                workers.append(worker)
            for worker in workers:
                self._idle.put(worker)
            self._workers = workers
            atexit.register(self.close)

    def close(self) -> None:
        """Stop the worker processes. Idempotent; the grader cannot be used afterwards."""
        if self._pid != os.getpid():
            self._init_runtime()
            self._closed = True
            return
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.kill()
        atexit.unregister(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None]

    def __enter__(self) -> "BoundedGrader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "timeout": self.timeout,
            "limits": asdict(self.limits),
            "max_memory_mb": self.max_memory_mb,
            "startup_timeout": self.startup_timeout,
            "cache_size": self.cache_size,
        }

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["limits"] = GradeLimits(**state["limits"])
        self.__init__(**state)

    # ---- grading ----------------------------------------------------------------------------
    def precheck(self, gold: str, pred: str) -> tuple[bool | None, str] | None:
        """``(result, reason)`` when the pair is refused without grading, else None."""
        reason = check_limits(gold, self.limits)
        if reason is not None:
            return None, f"gold refused: {reason}"
        reason = check_limits(pred, self.limits)
        if reason is not None:
            return False, f"prediction refused: {reason}"
        return None

    def grade(self, gold: str, pred: str, timeout: float | None = None) -> bool | None:
        """Is ``pred`` equivalent to ``gold``? True/False, or None when it cannot be decided.

        Both strings go to ``math_verify.parse`` as given, so wrap bare LaTeX (``$...$`` or
        ``\\boxed{...}``). At most ``timeout`` seconds of grading (default: the grader's), plus
        any wait for a free worker and, on first use, worker start-up.
        """
        timeout = self.timeout if timeout is None else timeout
        _check_timeout("timeout", timeout)
        if not isinstance(gold, str) or not isinstance(pred, str):
            raise TypeError(f"gold and pred must be strings, got {type(gold).__name__} and {type(pred).__name__}")
        refused = self.precheck(gold, pred)
        if refused is not None:
            self._count("refused")
            logger.debug("not grading (%s)", refused[1])
            return refused[0]
        key = (gold, pred)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats["cached"] += 1  # under the lock already
                return cached
        result = self._grade_in_worker(gold, pred, timeout)
        if result is not None and self.cache_size > 0:
            with self._lock:
                self._cache[key] = result
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def grade_batch(self, pairs: Iterable[tuple[str, str]], timeout: float | None = None) -> list[bool | None]:
        """:meth:`grade` for many ``(gold, pred)`` pairs, on all workers at once; same order back."""
        pairs = list(pairs)
        unique = list(dict.fromkeys(pairs))  # identical pairs are graded once
        if len(unique) <= 1 or self.num_workers == 1:
            results = {pair: self.grade(*pair, timeout=timeout) for pair in unique}
        else:
            self._ensure_started()
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="rlattn-grader")
                executor = self._executor
            futures = {pair: executor.submit(self.grade, *pair, timeout=timeout) for pair in unique}
            results = {pair: future.result() for pair, future in futures.items()}
        return [results[pair] for pair in pairs]

    def _grade_in_worker(self, gold: str, pred: str, timeout: float) -> bool | None:
        self._ensure_started()
        worker = self._acquire()
        try:
            result = worker.run(gold, pred, timeout)
            self._count("graded")
            return result
        except _WorkerTimeout as exc:
            self._count("timeouts")
            logger.warning(
                "grading %.80r timed out (%s); worker killed and replaced", pred, str(exc) or f"after {timeout:g} s"
            )
            return None
        except _WorkerDied as exc:
            self._count("worker_deaths")
            logger.warning("grader worker died while grading %.80r (%s); replaced", pred, str(exc) or "no reply")
            return None
        finally:
            self._release(worker)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise RuntimeError("this BoundedGrader is closed; create a new one")
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _release(self, worker: _Worker) -> None:
        if self._closed:
            worker.kill()
            return
        if worker.proc is None:
            try:
                worker.start()  # replacement starts now, imports while others work
            except OSError as exc:  # pragma: no cover - fork failure; retried on next use
                logger.warning("could not restart a grader worker: %s", exc)
        self._idle.put(worker)


def _check_timeout(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


# --------------------------------------------------------------------------------------------
# The process-wide default grader
# --------------------------------------------------------------------------------------------
_default_grader: BoundedGrader | None = None
_default_lock = threading.Lock()


def get_default_grader() -> BoundedGrader:
    """The grader shared by rewards built without an explicit one (created on first use)."""
    global _default_grader
    with _default_lock:
        if _default_grader is None or _default_grader.closed or _default_grader._pid != os.getpid():
            _default_grader = BoundedGrader()
        return _default_grader


def close_default_grader() -> None:
    """Stop the default grader's workers (also happens at interpreter exit)."""
    global _default_grader
    with _default_lock:
        grader, _default_grader = _default_grader, None
    if grader is not None:
        grader.close()
