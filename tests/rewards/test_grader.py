"""BoundedGrader: math-verify in worker processes, bounded, restartable, usable from any thread."""

import os
import pickle
import signal
import threading

import pytest

from rlattn.rewards import BoundedGrader, GradeLimits
from rlattn.rewards.grader import check_limits

LIMITS = GradeLimits()


@pytest.mark.parametrize(
    "text,refused",
    [
        (r"$\frac{1}{2}$", False),
        (r"\boxed{\left(\frac{\sqrt{3}}{2}, \frac{1}{2}\right)}", False),
        ("x" * 2000, False),
        ("x" * 2001, True),  # max_chars
        ("9" * 1000, False),
        ("9" * 1001, True),  # max_digits
        ("{" * 10 + "1" + "}" * 10, False),
        ("{" * 11 + "1" + "}" * 11, True),  # max_depth
        ("(" * 6 + "[" * 5 + "1", True),  # brackets of all kinds count together
        (r"\boxed{10^{999999}}", False),
        (r"\boxed{10^{9999999}}", True),  # exponent of 7 digits
        ("2**12345678", True),
        (r"\boxed{e^{-x^2}}", False),
        (r"\boxed{2^{2^{3}}}", False),  # small tower: 2^8
        (r"\boxed{2^{2^{100}}}", True),
        ("2**2**100", True),
        (r"\boxed{2^{2^{2^{2^{100}}}}}", True),
        (r"\boxed{1^{1^{99999999}}}", True),  # inner exponent too long to even read
        (r"\boxed{99999!}", False),
        (r"\boxed{100000!}", True),
    ],
)
def test_check_limits(text, refused):
    assert (check_limits(text, LIMITS) is not None) == refused


def test_grade_true_false(grader):
    assert grader.grade(r"$\frac{1}{2}$", r"\boxed{0.5}") is True
    assert grader.grade(r"$\frac{1}{2}$", r"\boxed{0.6}") is False


def test_refused_prediction_is_false_and_refused_gold_is_none(grader):
    before = grader.stats["refused"]
    assert grader.grade("$7$", "9" * 5000) is False
    assert grader.grade("$" + "9" * 5000 + "$", r"\boxed{7}") is None
    assert grader.stats["refused"] == before + 2


def test_batch_keeps_order_and_deduplicates(grader):
    pairs = [("$1$", r"\boxed{1}"), ("$1$", r"\boxed{2}"), ("$1$", r"\boxed{1}"), ("$2$", r"\boxed{2}")] * 3
    before = dict(grader.stats)
    assert grader.grade_batch(pairs) == [True, False, True, True] * 3
    done = sum(grader.stats[k] - before[k] for k in ("graded", "cached"))
    assert done == 3  # three distinct pairs


def test_cache_answers_repeated_pairs(grader):
    grader.grade("$41$", r"\boxed{41}")
    before = grader.stats["cached"]
    assert grader.grade("$41$", r"\boxed{41}") is True
    assert grader.stats["cached"] == before + 1


def test_grade_from_many_threads(grader, bounded):
    results = [None] * 8

    def work(i):
        results[i] = grader.grade(f"${i}$", rf"\boxed{{{i}.0}}")

    def run_all():
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    assert bounded(run_all) == [True] * 8


def test_hung_grading_times_out_and_the_worker_is_replaced(bounded):
    # Relaxed limits let a genuinely hanging input through (20 nested braces: sympy never
    # finishes); the worker is killed after the timeout, and the grader keeps working.
    with BoundedGrader(num_workers=1, limits=GradeLimits(max_depth=1000)) as g:
        assert g.grade("$1$", r"\boxed{1}") is True
        (pid,) = g.worker_pids()
        hang = r"\boxed{" + "{" * 20 + "1" + "}" * 20 + "}"
        assert bounded(lambda: g.grade("$1$", hang, timeout=1.0)) is None
        assert g.stats["timeouts"] == 1
        assert pid not in g.worker_pids()
        assert bounded(lambda: g.grade("$1$", r"\boxed{1.0}")) is True
        assert g.stats["timeouts"] == 1


def test_a_dead_worker_is_replaced():
    with BoundedGrader(num_workers=1) as g:
        assert g.grade("$3$", r"\boxed{3}") is True
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGKILL)
        g._workers[0].proc.wait(timeout=30)  # dead while idle: the next grade replaces it first
        assert g.grade("$3$", r"\boxed{4}") is False
        assert g.worker_pids() and g.worker_pids()[0] != pid


def test_a_worker_dying_mid_grade_gives_none_then_recovers(bounded):
    with BoundedGrader(num_workers=1, limits=GradeLimits(max_depth=1000)) as g:
        assert g.grade("$3$", r"\boxed{3}") is True
        (pid,) = g.worker_pids()
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        hang = r"\boxed{" + "{" * 20 + "1" + "}" * 20 + "}"
        assert bounded(lambda: g.grade("$1$", hang, timeout=30.0)) is None
        assert g.stats["worker_deaths"] == 1 and g.stats["timeouts"] == 0
        assert g.grade("$3$", r"\boxed{3}") is True


def test_close_stops_workers_and_refuses_use():
    g = BoundedGrader(num_workers=2)
    assert g.grade("$1$", r"\boxed{1}") is True
    pids = g.worker_pids()
    assert len(pids) == 2
    g.close()
    g.close()  # idempotent
    assert g.worker_pids() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        g.grade("$1$", r"\boxed{2}")


def test_workers_start_lazily():
    g = BoundedGrader(num_workers=1)
    assert g.worker_pids() == []
    g.close()


def test_pickle_carries_settings_only():
    g = BoundedGrader(num_workers=1, timeout=2.5, limits=GradeLimits(max_depth=7))
    clone = pickle.loads(pickle.dumps(g))
    assert (clone.num_workers, clone.timeout, clone.limits.max_depth) == (1, 2.5, 7)
    assert clone.worker_pids() == []
    clone.close()
    g.close()


@pytest.mark.parametrize("kwargs", [{"num_workers": 0}, {"timeout": 0}, {"timeout": float("nan")}, {"startup_timeout": -1}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        BoundedGrader(**kwargs)


def test_rejects_non_strings(grader):
    with pytest.raises(TypeError):
        grader.grade(1, "1")
