"""The graded arithmetic word problems: seeded, disjoint splits, answers correct by construction."""

import re
from collections import Counter

import pytest

from rlattn.data import load_dataset
from rlattn.data.arithmetic import ARITHMETIC_SPLITS, MAX_VALUE, in_partition, iter_word_problems

_OP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def _check_chain(row):
    """Re-derive the answer from the recorded operations and check each one is in the text."""
    ops = [_OP.match(o).groups() for o in row["ops"]]
    assert len(ops) == row["steps"]
    value = None
    for a, op, b, c in ops:
        a, b, c = int(a), int(b), int(c)
        assert value is None or a == value, "each step starts from the previous result"
        assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == c
        assert op != "/" or a % b == 0, "division is exact"
        assert 0 < c <= MAX_VALUE
        value = c
    assert str(value) == row["answer"]
    numbers = set(re.findall(r"\d+", row["problem"]))
    for a, op, b, _ in ops:  # every operand the solver needs is written in the problem (or is "twice")
        assert b in numbers or (op == "*" and b == "2" and "twice" in row["problem"])


def test_rows_are_deterministic_and_prefix_stable():
    a = list(iter_word_problems(30, seed=5, partition="train"))
    b = list(iter_word_problems(60, seed=5, partition="train"))
    assert a == b[:30]
    assert a != list(iter_word_problems(30, seed=6, partition="train"))


def test_answers_are_correct_by_construction():
    for row in iter_word_problems(300, seed=0):
        _check_chain(row)


def test_steps_come_in_equal_shares_in_both_splits():
    for split in ("train", "test"):
        counts = Counter(r["steps"] for r in iter_word_problems(90, seed=ARITHMETIC_SPLITS[split].seed, partition=split))
        assert counts == {1: 30, 2: 30, 3: 30}


def test_splits_never_share_a_problem():
    train = {r["problem"] for r in iter_word_problems(2000, seed=0, partition="train")}
    test = {r["problem"] for r in iter_word_problems(600, seed=1, partition="test")}
    assert len(train) == 2000 and len(test) == 600 and not train & test
    # the partition is a property of the text, whatever seed drew it
    assert all(in_partition(p, "test") for p in test) and not any(in_partition(p, "test") for p in train)
    other_seed = {r["problem"] for r in iter_word_problems(400, seed=99, partition="train")}
    assert not other_seed & test


def test_load_dataset_names_and_options():
    test = load_dataset("arith_test")
    assert len(test) == ARITHMETIC_SPLITS["test"].n
    assert test[0]["solution"] == next(iter_word_problems(1, seed=1, partition="test"))["answer"]
    assert len(load_dataset("arith", split="train", limit=10)) == 10
    assert set(load_dataset("arith", split="train", limit=12, steps=[3])["steps"]) == {3}
    with pytest.raises(ValueError, match="steps= applies only to 'arith'"):
        load_dataset("gsm8k_test", steps=[1])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("arith", split="dev")
    with pytest.raises(ValueError, match=r"steps=\(4,\)"):
        list(iter_word_problems(3, seed=0, steps=(4,)))
