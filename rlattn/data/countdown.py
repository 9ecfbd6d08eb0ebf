"""Countdown: a seeded procedural generator and a safe equation verifier.

The task (TinyZero protocol, used by the paper for its Countdown runs): given 3-4 numbers and a
target, write an arithmetic expression with ``+ - * /`` and parentheses that uses every number
exactly once and equals the target.

Conventions chosen here. TinyZero trains on the hub set ``Jiayi-Pan/Countdown-Tasks-3to4`` (3 or
4 numbers per puzzle); the generator script shipped with TinyZero draws numbers from 1..100 and
targets up to 1000 without checking solvability. (Not re-checked against the hub data: no hub
access here.) This generator keeps those ranges but guarantees a solution:

- numbers: ``num_numbers`` (default 3 or 4, uniform) integers drawn uniformly from
  ``[min_number, max_number]`` = ``[1, 99]``, repeats allowed;
- solvable by construction: the numbers are combined pairwise in random order with a random
  operator, and an operator is only allowed when the result is a positive integer (no zero, no
  negative, no fraction; division by 1 is skipped as trivial). Intermediates stay at most
  ``max_target * max_number``, the final value is the target and must lie in ``[1, max_target]``
  = ``[1, 999]``; a draw that cannot meet that is redrawn;
- the reference ``solution`` is that expression tree printed with the fewest parentheses;
- no duplicate ``(sorted nums, target)`` puzzle within one generated set;
- ``partition="train"`` / ``"test"`` splits the puzzle space by a CRC32 of ``(sorted nums,
  target)`` (1 in :data:`TEST_BUCKETS` puzzles is "test"), so the ``train`` and ``test`` splits can
  never share a puzzle, whatever their seeds.

Rows are generated one after another from one ``random.Random(seed)``, so the first ``k`` rows
of ``n`` do not depend on ``n``: same seed -> same rows, different seed -> different rows.

The fixed splits in :data:`COUNTDOWN_SPLITS` follow the paper's sizes (20,000 train / 512 test).
The paper says "4 numbers"; TinyZero's set mixes 3 and 4, which is the default here. Pass
``num_numbers=4`` for 4-number puzzles only.

``verify_countdown_equation`` is what a Countdown reward should call on the extracted answer.
"""

from __future__ import annotations

import ast
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Sequence

import datasets

from .templates import PromptTemplate, get_template

__all__ = [
    "COUNTDOWN_SPLITS",
    "CountdownSplit",
    "countdown_problem",
    "generate_countdown",
    "verify_countdown_equation",
]

#: One puzzle in ``TEST_BUCKETS`` (by CRC32 of sorted nums and target) belongs to the test space.
TEST_BUCKETS = 8
_MAX_REDRAWS = 1000


@dataclass(frozen=True)
class CountdownSplit:
    """The fixed generation settings behind ``load_dataset("countdown", split=...)``."""

    n: int
    seed: int


#: The paper's Countdown sizes: 20,000 train / 512 test puzzles.
COUNTDOWN_SPLITS: dict[str, CountdownSplit] = {
    "train": CountdownSplit(n=20_000, seed=0),
    "test": CountdownSplit(n=512, seed=1),
}


def countdown_problem(nums: Sequence[int], target: int) -> str:
    """The question text for one puzzle (the templates add the system prompt / format)."""
    return (
        f"Using the numbers {list(nums)}, create an equation that equals {target}. "
        "You can use basic arithmetic operations (+, -, *, /) and each number can be used "
        "exactly once. Show your work, then put the final equation in \\boxed{}, "
        "for example \\boxed{(1 + 2) / 3}."
    )


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

# Operator precedence for printing; leaves (numbers) bind tightest.
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_LEAF = 3


def _wrap(text: str, needs_parens: bool) -> str:
    return f"({text})" if needs_parens else text


def _combine(op: str, left: tuple[int, str, int], right: tuple[int, str, int]):
    """Build the node ``left op right`` as ``(value, text, precedence)``."""
    (lv, ls, lp), (rv, rs, rp) = left, right
    p = _PRECEDENCE[op]
    # Left operand needs parentheses only when it binds looser; the right one also when it binds
    # equally and the operator is not associative (a - (b + c), a / (b * c)).
    ltext = _wrap(ls, lp < p)
    rtext = _wrap(rs, rp < p or (rp == p and op in "-/"))
    if op == "+":
        value = lv + rv
    elif op == "-":
        value = lv - rv
    elif op == "*":
        value = lv * rv
    else:
        value = lv // rv
    return value, f"{ltext} {op} {rtext}", p


def _draw_puzzle(
    rng: random.Random, k: int, min_number: int, max_number: int, max_target: int
) -> tuple[list[int], int, str] | None:
    """One random solvable ``k``-number puzzle, or None if this draw missed ``[1, max_target]``.

    ``int(rng.random() * m)`` instead of ``randint``/``sample``/``choice``: same stream for the
    same seed, several times faster (20k puzzles well under a second).
    """
    rand = rng.random
    span = max_number - min_number + 1
    nums = [min_number + int(rand() * span) for _ in range(k)]
    pool = [(v, str(v), _LEAF) for v in nums]
    while len(pool) > 1:
        size = len(pool)
        i = int(rand() * size)
        j = int(rand() * (size - 1))
        if j >= i:
            j += 1
        a, b = pool[i], pool[j]
        av, bv = a[0], b[0]
        cap = max_target if size == 2 else max_target * max_number
        options = []
        if av + bv <= cap:
            options.append(("+", a, b))
        if av > bv:
            options.append(("-", a, b))
        elif bv > av:
            options.append(("-", b, a))
        if av * bv <= cap:
            options.append(("*", a, b))
        if bv > 1 and av % bv == 0:
            options.append(("/", a, b))
        if av > 1 and bv % av == 0 and av != bv:
            options.append(("/", b, a))
        if not options:
            return None
        op, left, right = options[int(rand() * len(options))]
        node = _combine(op, left, right)
        pool = [x for idx, x in enumerate(pool) if idx != i and idx != j]
        pool.append(node)
    target, solution, _ = pool[0]
    if not 1 <= target <= max_target:
        return None
    return nums, target, solution


def _in_test_space(nums: Sequence[int], target: int) -> bool:
    key = f"{sorted(nums)}|{target}".encode()
    return zlib.crc32(key) % TEST_BUCKETS == 0


def _check_args(n, seed, num_numbers, min_number, max_number, max_target, partition):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"countdown n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"countdown seed must be an integer, got {seed!r}")
    if isinstance(num_numbers, int):
        lo = hi = num_numbers
    else:
        try:
            lo, hi = num_numbers
        except (TypeError, ValueError):
            raise ValueError(
                f"num_numbers must be an int or a (min, max) pair, got {num_numbers!r}"
            ) from None
    if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi <= 6):
        raise ValueError(f"num_numbers must lie within 2..6 with min <= max, got {num_numbers!r}")
    if not (isinstance(min_number, int) and isinstance(max_number, int)):
        raise ValueError("min_number and max_number must be integers")
    if not 1 <= min_number <= max_number:
        raise ValueError(
            f"need 1 <= min_number <= max_number, got min_number={min_number}, "
            f"max_number={max_number}"
        )
    if not isinstance(max_target, int) or max_target < 1:
        raise ValueError(f"max_target must be a positive integer, got {max_target!r}")
    if partition not in (None, "train", "test"):
        raise ValueError(f"partition must be None, 'train' or 'test', got {partition!r}")
    return lo, hi


def iter_countdown(
    n: int,
    seed: int,
    num_numbers: int | tuple[int, int] = (3, 4),
    min_number: int = 1,
    max_number: int = 99,
    max_target: int = 999,
    partition: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` puzzle rows (``id``, ``problem``, ``nums``, ``target``, ``solution``).

    The rows carry no ``prompt``; :func:`generate_countdown` and ``load_dataset`` add it.
    Arguments are those of :func:`generate_countdown`.
    """
    lo, hi = _check_args(n, seed, num_numbers, min_number, max_number, max_target, partition)
    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    made = 0
    misses = 0
    k = None
    while made < n:
        if k is None:  # pick the size once per row, so a miss does not bias it
            k = lo + int(rng.random() * (hi - lo + 1))
        puzzle = _draw_puzzle(rng, k, min_number, max_number, max_target)
        if puzzle is not None:
            nums, target, solution = puzzle
            key = (tuple(sorted(nums)), target)
            in_test = _in_test_space(nums, target) if partition else False
            if key not in seen and (
                partition is None or in_test == (partition == "test")
            ):
                seen.add(key)
                misses = 0
                k = None
                yield {
                    "id": f"countdown-{seed}-{made}",
                    "problem": countdown_problem(nums, target),
                    "nums": nums,
                    "target": target,
                    "solution": solution,
                }
                made += 1
                continue
        misses += 1
        if misses > _MAX_REDRAWS * TEST_BUCKETS:
            raise ValueError(
                f"could not generate {n} distinct Countdown puzzles (stuck after {made}) with "
                f"num_numbers={num_numbers}, numbers in [{min_number}, {max_number}], "
                f"max_target={max_target}, partition={partition!r}: the puzzle space is too small"
            )


def generate_countdown(
    n: int,
    seed: int,
    num_numbers: int | tuple[int, int] = (3, 4),
    min_number: int = 1,
    max_number: int = 99,
    max_target: int = 999,
    partition: str | None = None,
    template: str | PromptTemplate = "chat",
) -> datasets.Dataset:
    """Generate ``n`` solvable Countdown puzzles as a ``datasets.Dataset``.

    Args:
        n: number of puzzles.
        seed: seed of the ``random.Random`` stream; same seed -> identical dataset.
        num_numbers: numbers per puzzle, an int or an inclusive ``(min, max)`` range (2..6).
        min_number, max_number: inclusive range the numbers are drawn from (default 1..99).
        max_target: largest allowed target (targets are in ``[1, max_target]``).
        partition: ``None`` (any puzzle), ``"train"`` or ``"test"`` (disjoint halves of the
            puzzle space; see the module docstring).
        template: prompt template name (see ``rlattn.data.PROMPT_TEMPLATES``) or callable.

    Columns: ``id`` (``"countdown-<seed>-<i>"``), ``prompt``, ``problem`` (the question text),
    ``nums`` (list[int]), ``target`` (int), ``solution`` (one reference equation; other answers
    can be right too, so grade with :func:`verify_countdown_equation`).
    """
    build = get_template(template)
    rows = list(
        iter_countdown(n, seed, num_numbers, min_number, max_number, max_target, partition)
    )
    columns: dict[str, list] = {"id": [], "prompt": [], "problem": [], "nums": [],
                                "target": [], "solution": []}
    for row in rows:
        columns["prompt"].append(build(row["problem"]))
        for key in ("id", "problem", "nums", "target", "solution"):
            columns[key].append(row[key])
    return datasets.Dataset.from_dict(columns)


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------

_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
# Spellings models use for the four operators, mapped to Python's.
_SPELLINGS = (
    ("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("·", "*"), ("÷", "/"),
    ("\\left(", "("), ("\\right)", ")"), ("−", "-"),
)


# After the spellings are mapped: ASCII digits, spaces, operators and parentheses only. This
# keeps out what Python's grammar would read as numbers but Countdown should not (0x10, 1_0, 1e3).
_ALLOWED_TEXT = re.compile(r"[0-9 \t\n+\-*/()]+")


class _Rejected(Exception):
    pass


def _evaluate(node: ast.AST, literals: list[int]) -> Fraction:
    """Exact value of an ``ast`` node built only from int literals and ``+ - * /``."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate(node.left, literals)
        right = _evaluate(node.right, literals)
        op = type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if right == 0:
            raise _Rejected("division by zero")
        return left / right
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    raise _Rejected(f"disallowed syntax: {type(node).__name__}")


def verify_countdown_equation(
    equation: str,
    nums: Sequence[int],
    target: int | float,
    *,
    max_length: int = 256,
) -> bool:
    """True iff ``equation`` uses each of ``nums`` exactly once and evaluates to ``target``.

    Safe on untrusted model output: the text is parsed with ``ast`` (never ``eval``); only
    non-negative integer literals, binary ``+ - * /`` and parentheses are accepted (no unary
    minus, no floats, no names, calls or attributes). Numbers are compared as a multiset against
    ``nums``; the value is computed exactly with ``fractions.Fraction`` and must be within 1e-6 of
    ``target``. Inputs longer than ``max_length`` characters are rejected.

    Lenient about notation only: ``\\times``/``\\cdot``/``×``/``·`` mean ``*``, ``\\div``/``÷``
    mean ``/``, and a trailing ``= <target>`` (``"(44 - 19) * 3 + 7 = 82"``) is accepted when the
    right-hand side is an integer equal to the target.
    """
    if not isinstance(equation, str) or len(equation) > max_length:
        return False
    text = equation.strip()
    for spelling, op in _SPELLINGS:
        text = text.replace(spelling, op)
    if text.count("=") > 1:
        return False
    if "=" in text:
        text, rhs = text.split("=")
        rhs = rhs.strip()
        if not rhs.isascii() or not rhs.isdigit() or int(rhs) != target:
            return False
    if not _ALLOWED_TEXT.fullmatch(text):
        return False
    try:
        tree = ast.parse(text.strip(), mode="eval")
        literals: list[int] = []
        value = _evaluate(tree.body, literals)
    except (SyntaxError, ValueError, RecursionError, MemoryError, _Rejected):
        return False
    try:
        expected = Counter(int(x) for x in nums)
        goal = Fraction(target)
    except (TypeError, ValueError):
        return False
    if Counter(literals) != expected:
        return False
    return abs(value - goal) <= Fraction(1, 10**6)
