"""Countdown: seeded generator, fixed splits, and the safe equation verifier."""

from __future__ import annotations

import ast
import time
from fractions import Fraction

import pytest

from rlattn.data import (
    COUNTDOWN_SPLITS,
    SYSTEM_PROMPT,
    generate_countdown,
    load_dataset,
    verify_countdown_equation,
)
from rlattn.data.countdown import iter_countdown


def _intermediates(expr: str) -> list[Fraction]:
    """Values of every operator node of ``expr`` (ints and + - * / only)."""
    values = []

    def walk(node):
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        a, b = walk(node.left), walk(node.right)
        ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__}
        value = ops[type(node.op)](b)
        values.append(value)
        return value

    walk(ast.parse(expr, mode="eval").body)
    return values


# --- generator ---------------------------------------------------------------------------------


def test_same_seed_same_rows_different_seed_different_rows():
    a = generate_countdown(200, seed=5).to_list()
    assert a == generate_countdown(200, seed=5).to_list()
    b = generate_countdown(200, seed=6).to_list()
    assert [(r["nums"], r["target"]) for r in a] != [(r["nums"], r["target"]) for r in b]


def test_rows_are_a_prefix_stream():
    short = list(iter_countdown(50, 9))
    long = list(iter_countdown(300, 9))
    assert short == long[:50]


def test_row_schema_and_conversational_prompt():
    row = generate_countdown(3, seed=0)[0]
    assert set(row) == {"id", "prompt", "problem", "nums", "target", "solution"}
    assert row["id"] == "countdown-0-0"
    system, user = row["prompt"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user" and user["content"] == row["problem"]
    assert row["problem"].startswith(
        f"Using the numbers {row['nums']}, create an equation that equals {row['target']}."
    )
    assert "\\boxed{}" in row["problem"]


def test_every_generated_puzzle_is_solvable_within_conventions():
    rows = list(iter_countdown(3000, seed=123))
    for row in rows:
        assert len(row["nums"]) in (3, 4)
        assert all(1 <= x <= 99 for x in row["nums"])
        assert 1 <= row["target"] <= 999
        assert verify_countdown_equation(row["solution"], row["nums"], row["target"]), row
        # positive integers at every step, as the generator promises
        assert all(v > 0 and v.denominator == 1 for v in _intermediates(row["solution"])), row
    assert len({(tuple(sorted(r["nums"])), r["target"]) for r in rows}) == len(rows)
    sizes = [len(r["nums"]) for r in rows]
    assert 0.4 < sizes.count(3) / len(sizes) < 0.6  # sizes are not biased by redraws
    assert {op for r in rows for op in "+-*/" if op in r["solution"]} == set("+-*/")


def test_generator_options():
    rows = list(iter_countdown(300, seed=1, num_numbers=4, min_number=1, max_number=10,
                               max_target=50))
    assert all(len(r["nums"]) == 4 and max(r["nums"]) <= 10 and r["target"] <= 50 for r in rows)
    assert all(verify_countdown_equation(r["solution"], r["nums"], r["target"]) for r in rows)


def test_fixed_splits_follow_the_paper_sizes_and_verify():
    assert (COUNTDOWN_SPLITS["train"].n, COUNTDOWN_SPLITS["test"].n) == (20_000, 512)
    start = time.perf_counter()
    train = list(iter_countdown(20_000, 0, partition="train"))  # what split="train" generates
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0  # ~0.45 s on one CPU core; generous so a loaded CI box does not flake
    test = load_dataset("countdown", split="test").to_list()
    assert (len(train), len(test)) == (20_000, 512)
    for row in train + test:
        assert verify_countdown_equation(row["solution"], row["nums"], row["target"]), row
    train_keys = {(tuple(sorted(r["nums"])), r["target"]) for r in train}
    test_keys = {(tuple(sorted(r["nums"])), r["target"]) for r in test}
    assert not train_keys & test_keys
    head = load_dataset("countdown", split="train", limit=50)
    assert head["id"] == [r["id"] for r in train[:50]]
    assert head["solution"] == [r["solution"] for r in train[:50]]
    assert load_dataset("countdown_test")["id"] == [r["id"] for r in test]


def test_load_dataset_countdown_kwargs():
    ds = load_dataset("countdown", n=10, seed=3, template="plain")
    ref = generate_countdown(10, seed=3, template="plain")
    assert ds.to_list() == ref.select_columns(ds.column_names).to_list()
    assert isinstance(ds[0]["prompt"], str)
    assert load_dataset("countdown", split="test", seed=99, limit=3)["id"][0] == "countdown-99-0"
    assert load_dataset("countdown", split="train", n=5).num_rows == 5
    assert len(load_dataset("countdown", n=20, seed=0, num_numbers=3)[0]["nums"]) == 3


def test_countdown_errors():
    with pytest.raises(ValueError, match="unknown split 'dev' for 'countdown'; available: "
                                         "'test', 'train'"):
        load_dataset("countdown", split="dev")
    with pytest.raises(ValueError, match="'countdown' needs split="):
        load_dataset("countdown")
    with pytest.raises(ValueError, match="levels= does not apply to 'countdown'"):
        load_dataset("countdown", split="test", levels=[1])
    with pytest.raises(ValueError, match="num_numbers must lie within 2..6"):
        generate_countdown(5, seed=0, num_numbers=(4, 3))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        generate_countdown(0, seed=0)
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        generate_countdown(5, seed=0, template="nope")
    with pytest.raises(ValueError, match="puzzle space is too small"):
        list(iter_countdown(100, seed=0, num_numbers=2, max_number=2, max_target=4))


# --- verifier ----------------------------------------------------------------------------------


@pytest.mark.parametrize("equation", [
    "(44 - 19) * 3 + 7",
    "7 + 3 * (44 - 19)",
    "((44-19)*3)+7",
    "(44 - 19) \\times 3 + 7",
    "(44 − 19) × 3 + 7",
    "(44 - 19) * 3 + 7 = 82",
    "  (44 - 19) * 3 + 7\n",
])
def test_verifier_accepts_correct_equations(equation):
    assert verify_countdown_equation(equation, [44, 19, 3, 7], 82)


def test_verifier_exact_division():
    assert verify_countdown_equation("(1 + 2) / 3", [1, 2, 3], 1)
    assert verify_countdown_equation("7 / 3 * 3", [7, 3, 3], 7)  # exact, no float rounding
    assert verify_countdown_equation("10 / 4 * 2", [10, 4, 2], 5)
    assert not verify_countdown_equation("10 / 4", [10, 4], 2)
    assert verify_countdown_equation("10 \\div 4 * 2", [10, 4, 2], 5.0)


@pytest.mark.parametrize("equation, why", [
    ("(44 - 19) * 3 + 7 + 7", "a number used twice"),
    ("44 + 44 - 19 - 3", "a number reused in place of another"),
    ("(44 - 19) * 3", "a number missing"),
    ("(44 - 19) * 3 + 8", "a number not given"),
    ("(44 - 19) * 3 - 7", "wrong value"),
    ("(44 - 19) * 3 + 7 = 83", "wrong right-hand side"),
    ("(44 - 19) * 3 + 7 = 82 = 82", "two equals signs"),
    ("-(19 - 44) * 3 + 7", "unary minus"),
    ("(44 - 19) * 3 + 7.0", "float literal"),
    ("(44 - 19) * 3 ** 1 + 7", "power"),
    ("(44 - 19) * 3 // 1 + 7", "floor division"),
    ("0x2c - 19", "hex literal"),
    ("4_4 - 19", "underscore literal"),
    ("", "empty"),
    ("44 - 19 * 3 +", "syntax error"),
    ("__import__('os').system('echo pwned')", "code injection"),
    ("[44, 19, 3, 7]", "a list"),
    ("abs(44) - 19 + 3 * 7", "a call"),
    ("x + 44 + 19 + 3 + 7", "a name"),
])
def test_verifier_rejects(equation, why):
    assert not verify_countdown_equation(equation, [44, 19, 3, 7], 82), why


def test_verifier_rejects_division_by_zero_long_input_and_non_strings():
    assert not verify_countdown_equation("5 / (3 - 3)", [5, 3, 3], 0)
    long = "(" * 150 + "1" + ")" * 150
    assert not verify_countdown_equation(long, [1], 1)
    assert verify_countdown_equation("(" * 50 + "1" + ")" * 50, [1], 1)
    assert not verify_countdown_equation("1 + 2", [1, 2], 3, max_length=4)
    assert not verify_countdown_equation(None, [1, 2], 3)
    assert not verify_countdown_equation(b"1 + 2", [1, 2], 3)


def test_verifier_does_not_execute_anything(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    payload = f"__import__('pathlib').Path('{marker}').touch() or 1"
    assert not verify_countdown_equation(payload, [1], 1)
    assert not marker.exists()
