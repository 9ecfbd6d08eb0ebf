"""Graded arithmetic word problems: a seeded generator with disjoint train / held-out splits.

Why it exists: the embedded SmolLM2-135M solves ~3-6 % of GSM8K, so almost every GRPO group has
zero reward variance there and nothing is learned. These problems are GSM8K-shaped (a short story,
one question, an integer answer) but small: one to three arithmetic steps on small numbers, so the
embedded model's pass rate is strictly between 0 and 1 on most of them (docs/results.md has the
measured histogram).

A problem is a chain. A starting quantity (a count, or ``a`` groups of ``b``: one multiplication
step) is changed by events (gain: ``+``; loss: ``-``; "twice as many": ``×``), and the last step
may share the total out equally (``÷``, exact). ``steps`` counts the arithmetic operations, so a
3-step problem needs three operations to solve. Every intermediate value is a positive integer
of at most :data:`MAX_VALUE`; the answer is computed from the same chain the text describes, so it
is correct by construction (the tests re-derive it from the recorded operations).

Splits: ``partition="train"`` / ``"test"`` split the problem space by a CRC32 of the problem text
(1 in :data:`TEST_BUCKETS` texts is "test"), so the two can never share a problem whatever their
seeds or sizes; within one generated set no text repeats. ``steps`` are drawn in equal shares
(round-robin 1, 2, 3, 1, ...), so the held-out split has the training split's mix. Rows come from
one ``random.Random(seed)`` in order: the first ``k`` rows of ``n`` do not depend on ``n``.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

__all__ = ["ARITHMETIC_SPLITS", "ArithmeticSplit", "WordProblem", "generate_word_problem", "iter_word_problems"]

#: One text in ``TEST_BUCKETS`` (by CRC32) belongs to the held-out space.
TEST_BUCKETS = 8
#: Largest value any step may produce.
MAX_VALUE = 100
_MAX_REDRAWS = 10_000

_NAMES = ("Tom", "Mia", "Sam", "Lily", "Ben", "Ava", "Leo", "Zoe", "Max", "Emma", "Noah", "Ella", "Jack", "Ruby",
          "Omar", "Nina", "Ivan", "Sara", "Ken", "Lucy")
_PRONOUN = {"Tom": "he", "Sam": "he", "Ben": "he", "Leo": "he", "Max": "he", "Noah": "he", "Jack": "he",
            "Omar": "he", "Ivan": "he", "Ken": "he"}
# (plural item, container) pairs
_ITEMS = (("apples", "bags"), ("marbles", "jars"), ("stickers", "sheets"), ("pencils", "boxes"),
          ("cookies", "trays"), ("books", "shelves"), ("shells", "buckets"), ("cards", "packs"),
          ("eggs", "cartons"), ("flowers", "vases"), ("coins", "purses"), ("toy cars", "boxes"),
          ("beads", "bags"), ("stamps", "pages"), ("candies", "jars"), ("balloons", "packs"))


@dataclass(frozen=True)
class WordProblem:
    """One generated problem: the text, its integer answer and the operations that give it."""

    problem: str
    answer: int
    steps: int
    ops: tuple[tuple[str, int, int, int], ...]  # (op, left, right, result) in solving order


@dataclass(frozen=True)
class ArithmeticSplit:
    """A fixed, named split: how many problems, from which seed."""

    n: int
    seed: int


#: The registered splits (``load_dataset("arith", split=...)``, ``arith_train`` / ``arith_test``).
ARITHMETIC_SPLITS: dict[str, ArithmeticSplit] = {"train": ArithmeticSplit(4000, 0), "test": ArithmeticSplit(600, 1)}


def _start(rng: random.Random, name: str, item: str, box: str, want_step: bool):
    """The opening sentence and its value; with ``want_step`` it is ``a`` groups of ``b`` (one ×)."""
    if want_step:
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        return f"{name} has {a} {box} of {item} with {b} {item} in each.", a * b, [("*", a, b, a * b)]
    a = rng.randint(3, 20)
    return f"{name} has {a} {item}.", a, []


def _event(rng: random.Random, value: int, he: str, item: str, allow_mul: bool):
    """One change of the running total: (sentence, new value, op) or None if none fits."""
    kinds = ["add", "sub"] + (["mul"] if allow_mul else [])
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "add":
            b = rng.randint(2, 12)
            if value + b <= MAX_VALUE:
                text = rng.choice((f"Then {he} buys {b} more {item}.", f"A friend gives {he == 'he' and 'him' or 'her'} {b} more {item}.",
                                   f"Then {he} finds {b} more {item}."))
                return text, value + b, ("+", value, b, value + b)
        elif kind == "sub":
            if value >= 3:
                b = rng.randint(2, min(12, value - 1))
                text = rng.choice((f"Then {he} gives away {b} {item}.", f"Then {he} loses {b} {item}.",
                                   f"Then {he} sells {b} {item}."))
                return text, value - b, ("-", value, b, value - b)
        else:
            k = 2
            if value * k <= MAX_VALUE:
                word = "twice"
                return f"Then {he} ends up with {word} as many {item} as before.", value * k, ("*", value, k, value * k)
    return None


def _share(rng: random.Random, value: int, item: str, box: str):
    """The last step as an exact division, or None when the value has no small divisor."""
    divisors = [d for d in range(2, 6) if value % d == 0 and value // d >= 2]
    if not divisors:
        return None
    d = rng.choice(divisors)
    text = f"Then all the {item} are put equally into {d} {box}. How many {item} are in each of the {box}?"
    return text, value // d, ("/", value, d, value // d)


def generate_word_problem(rng: random.Random, steps: int) -> WordProblem:
    """One problem needing exactly ``steps`` (1-3) operations, drawn from ``rng``."""
    if steps not in (1, 2, 3):
        raise ValueError(f"steps={steps!r} must be 1, 2 or 3")
    for _ in range(_MAX_REDRAWS):
        name = rng.choice(_NAMES)
        he = _PRONOUN.get(name, "she")
        item, box = rng.choice(_ITEMS)
        start_step = rng.random() < 0.4
        text, value, ops = _start(rng, name, item, box, start_step)
        sentences = [text]
        remaining = steps - len(ops)
        end_with_share = remaining >= 1 and rng.random() < 0.3
        n_events = remaining - int(end_with_share)
        ok = True
        for _ in range(n_events):
            ev = _event(rng, value, he, item, allow_mul=not ops or ops[-1][0] != "*")
            if ev is None:
                ok = False
                break
            sentences.append(ev[0])
            value = ev[1]
            ops.append(ev[2])
        if not ok:
            continue
        if end_with_share:
            share = _share(rng, value, item, box)
            if share is None:
                continue
            sentences.append(share[0])
            value = share[1]
            ops.append(share[2])
        else:
            sentences.append(f"How many {item} does {name} have now?")
        if len(ops) != steps:
            continue
        return WordProblem(problem=" ".join(sentences), answer=value, steps=steps, ops=tuple(ops))
    raise RuntimeError(f"could not draw a {steps}-step problem in {_MAX_REDRAWS} tries")  # pragma: no cover


def in_partition(problem: str, partition: str | None) -> bool:
    """Whether a problem text belongs to ``partition`` (``train``, ``test`` or None: either)."""
    if partition is None:
        return True
    is_test = zlib.crc32(problem.encode()) % TEST_BUCKETS == 0
    return is_test if partition == "test" else not is_test


def iter_word_problems(n: int, seed: int, partition: str | None = None,
                       steps: Sequence[int] = (1, 2, 3)) -> Iterator[dict]:
    """``n`` distinct rows (``id``, ``problem``, ``answer``, ``steps``, ``ops``) of ``partition``.

    ``ops`` lists the solution's operations in order as text, e.g. ``["9 * 8 = 72", "72 - 5 = 67"]``.
    """
    if partition not in (None, "train", "test"):
        raise ValueError(f"partition={partition!r} must be 'train', 'test' or None")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    steps = tuple(steps)
    if not steps or any(s not in (1, 2, 3) for s in steps):
        raise ValueError(f"steps={steps!r} must be a non-empty list of 1, 2 and 3")
    rng = random.Random(seed)
    seen: set[str] = set()
    made = 0
    tries = 0
    while made < n:
        tries += 1
        if tries > n * 200:
            raise RuntimeError(f"only {made} distinct problems of partition {partition!r} after {tries} draws")
        p = generate_word_problem(rng, steps[made % len(steps)])
        if p.problem in seen or not in_partition(p.problem, partition):
            continue
        seen.add(p.problem)
        yield {"id": f"arith-{partition or 'all'}-{seed}-{made}", "problem": p.problem, "answer": str(p.answer),
               "steps": p.steps, "ops": [f"{a} {op} {b} = {c}" for op, a, b, c in p.ops]}
        made += 1
