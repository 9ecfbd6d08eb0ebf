"""rlattn.eval grading: the training reward's bounded grader on a table of tricky equivalences."""

import pytest

from rlattn.eval import grade_completions, grade_samples
from rlattn.rewards import BoundedGrader, get_reward_fn


@pytest.fixture(scope="module")
def grader():
    with BoundedGrader(num_workers=2, timeout=10.0) as g:
        yield g


# (gold as a dataset stores it, completion, expected extracted answer, expected correct)
TABLE = [
    # fractions vs decimals, \dfrac
    (r"\frac{1}{2}", r"So \boxed{0.5}.", "0.5", True),
    ("0.25", r"\boxed{\frac{1}{4}}", r"\frac{1}{4}", True),
    (r"\frac{3}{4}", r"\boxed{\dfrac{3}{4}}", r"\dfrac{3}{4}", True),
    (r"\dfrac{3}{4}", r"\boxed{0.75}", "0.75", True),
    (r"\frac{1}{3}", r"\boxed{0.33}", "0.33", False),  # a rounded decimal is not the fraction
    (r"\frac{1}{2}", r"\boxed{\frac{2}{1}}", r"\frac{2}{1}", False),
    # intervals
    ("(2, 5]", r"\boxed{(2,5]}", "(2,5]", True),
    ("(2, 5]", r"\boxed{[2,5]}", "[2,5]", False),  # closed vs half-open
    (r"[-1, \infty)", r"\boxed{[-1,\infty)}", r"[-1,\infty)", True),
    # sets are unordered, tuples are ordered
    (r"\{1, 2, 3\}", r"\boxed{\{3,2,1\}}", r"\{3,2,1\}", True),
    (r"\{1,2,3\}", r"\boxed{\{1,2\}}", r"\{1,2\}", False),
    ("(1, 2)", r"\boxed{(1,2)}", "(1,2)", True),
    ("(1, 2)", r"\boxed{(2,1)}", "(2,1)", False),
    ("(3, -1, 2)", r"\boxed{(3,-1,2)}", "(3,-1,2)", True),
    # x=3 vs 3
    ("3", r"\boxed{x=3}", "x=3", True),
    ("x=3", r"\boxed{3}", "3", True),
    # units, degrees, currency, percent
    ("5", r"The side is \boxed{5\text{ cm}}", r"5\text{ cm}", True),
    ("12", r"\boxed{12\text{ meters}}", r"12\text{ meters}", True),
    (r"90^\circ", r"\boxed{90}", "90", True),
    ("18", r"\boxed{\$18}", r"\$18", True),
    (r"50\%", r"\boxed{50}", "50", True),
    # radicals
    (r"2\sqrt{3}", r"\boxed{\sqrt{12}}", r"\sqrt{12}", True),
    (r"\sqrt{2}", r"\boxed{1.41}", "1.41", False),
    # wrong answers and missing answers
    ("204", r"\boxed{205}", "205", False),
    ("204", r"\boxed{-204}", "-204", False),
    ("7", r"first \boxed{7}, then on reflection \boxed{8}", "8", False),  # the last box counts
    ("7", "the answer is 7", None, False),  # strict: no box, no answer
    ("7", r"\boxed{}", None, False),  # an empty box is no answer
]


@pytest.mark.parametrize("gold, completion, answer, correct", TABLE, ids=[f"{i}:{t[0]}|{t[2]}" for i, t in enumerate(TABLE)])
def test_tricky_equivalences(grader, gold, completion, answer, correct):
    (grade,) = grade_completions([completion], [gold], grader)
    assert grade.answer == answer
    assert grade.has_format is (answer is not None)
    assert grade.correct is correct


def test_batch_agrees_with_the_training_reward(grader):
    golds = [t[0] for t in TABLE]
    completions = [t[1] for t in TABLE]
    grades = grade_completions(completions, golds, grader)
    reward = get_reward_fn("accuracy", grader=grader)(completions, solution=golds)
    assert [float(g.correct) for g in grades] == reward
    assert [g.correct for g in grades] == [t[3] for t in TABLE]


def test_pathological_output_is_refused_not_hung(grader):
    # a numeric power tower and braces nested 20 deep: refused by the grader's pre-checks (wrong)
    completions = [r"\boxed{2^{2^{100}}}", r"\boxed{" + "{" * 20 + "7" + "}" * 20 + "}", "{" * 100_000]
    grades = grade_completions(completions, ["7", "7", "7"], grader)
    assert [g.correct for g in grades] == [False, False, False]
    assert grades[2].answer is None


def test_lenient_fallback_grades_the_last_number(grader):
    (strict,) = grade_completions(["so it is 42"], ["42"], grader)
    (lenient,) = grade_completions(["so it is 42"], ["42"], grader, fallback_last_number=True)
    assert strict.correct is False and strict.answer is None and strict.boxed is False
    assert lenient.correct is True
    assert lenient.answer == "42"  # the stored answer is the graded one (maj@k votes with it)
    assert lenient.boxed is False and lenient.has_format is False  # format still means a non-empty \boxed{}


# unboxed completions the lenient grading reads by their last number, and an unusable gold
LENIENT_EXTRA = [("42", "so it is 42", "42", True), ("1234", "it costs 1,234.", "1234", True), ("7", "maybe 8", "8", False),
                 ("", "so it is 42", "42", None), ("", r"\boxed{7}", "7", None)]


def test_both_gradings_agree_with_grading_each_way_directly(grader):
    golds = [t[0] for t in TABLE + LENIENT_EXTRA]
    completions = [t[1] for t in TABLE + LENIENT_EXTRA]
    both = grade_samples(completions, golds, grader, gradings=["lenient", "strict"])
    assert list(both) == ["lenient", "strict"]
    assert both["strict"] == grade_completions(completions, golds, grader)  # derived, yet equal to grading strictly
    assert both["lenient"] == grade_completions(completions, golds, grader, fallback_last_number=True)
    assert [(g.answer, g.correct) for g in both["lenient"][len(TABLE):]] == [(t[2], t[3]) for t in LENIENT_EXTRA]
    for strict, lenient in zip(both["strict"], both["lenient"]):
        assert strict.boxed == lenient.boxed and not (strict.correct and not lenient.correct)  # strict <= lenient
    assert grade_samples(completions, golds, grader, gradings=["strict"]) == {"strict": both["strict"]}
    with pytest.raises(ValueError, match="grading=\\['loose'\\]"):
        grade_samples(completions, golds, grader, gradings=["loose"])


def test_unusable_gold_and_grader_failures_are_ungraded_not_dropped(grader):
    grades = grade_completions([r"\boxed{7}", r"\boxed{7}"], ["", "7"], grader)
    assert [g.correct for g in grades] == [None, True]

    class TimingOutGrader(BoundedGrader):  # every pair "timed out", as a hung worker would
        def grade_batch(self, pairs, timeout=None):
            return [None for _ in pairs]

    grades = grade_completions([r"\boxed{7}", "no answer"], ["7", "7"], TimingOutGrader(num_workers=1))
    assert grades[0].correct is None and grades[0].answer == "7"
    assert grades[1].correct is False  # nothing to grade: wrong, not ungraded


def test_length_mismatch_fails():
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        grade_completions(["a", "b"], ["1"], grader=None)
