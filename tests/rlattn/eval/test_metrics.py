"""rlattn.eval metrics and config: pass@k, maj@k (ties), aggregation, bad inputs. Hand-computed."""

import math

import pytest

from rlattn.eval import EvalConfig, default_k_values, parse_eval_args
from rlattn.eval.metrics import ProblemSamples, dataset_metrics, maj_at_k, normalise_answer, pass_at_k


# ---- pass@k: 1 - C(n-c, k) / C(n, k) ----
@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 0, 1, 0.0),
        (4, 4, 4, 1.0),
        (4, 1, 1, 0.25),  # c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (16, 1, 4, 0.25),  # 1 - C(15,4)/C(16,4) = 1 - 1365/1820
        (3, 2, 2, 1.0),  # n - c < k: every pair holds a correct sample
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_is_stable_for_large_n():
    # 1 - C(999, 500) / C(1000, 500) = 1 - 500/1000 exactly; naive float binomials overflow here
    assert pass_at_k(1000, 1, 500) == 0.5
    # tiny probabilities survive: c=1 of n=10**4, k=1 -> 1e-4
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-12)
    assert math.isfinite(pass_at_k(5000, 3, 2500))


@pytest.mark.parametrize("n, c, k, match", [(4, 1, 5, "k=5"), (4, 1, 0, "k=0"), (4, 5, 1, "c=5"), (0, 0, 1, "n=0"), (4, -1, 1, "c=-1")])
def test_pass_at_k_rejects_bad_inputs(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


# ---- maj@k ----
def test_maj_majority_wins():
    answers = ["3", "4", "4", "3", "4"]
    correct = [True, False, False, True, False]
    assert maj_at_k(answers, correct, 5) is False  # "4" x3 beats "3" x2
    assert maj_at_k(answers, correct, 1) is True  # only the first sample votes


def test_maj_tie_goes_to_earliest_first_occurrence():
    # "7" (first at index 0) and "9" (first at index 1) both have 2 votes: "7" wins
    assert maj_at_k(["7", "9", "9", "7"], [True, False, False, True], 4) is True
    assert maj_at_k(["9", "7", "7", "9"], [False, True, True, False], 4) is False
    # three-way tie of singletons: the first sample's answer
    assert maj_at_k(["a", "b", "c"], [False, True, True], 3) is False


def test_maj_groups_by_normalised_string_not_by_equivalence():
    # "\\dfrac{1}{2}" and "\\frac{1}{2}" normalise to one string; "0.5" is a separate group
    answers = ["0.5", "\\dfrac{1}{2}", "\\frac{1}{2}", "0.5", "0.5"]
    correct = [True, True, True, True, True]
    assert maj_at_k(answers, correct, 5) is True
    answers = ["5", "\\frac{1}{2}", "\\dfrac{1}{2}"]
    assert maj_at_k(answers, [False, True, True], 3) is True  # 2 votes for 1/2 beat 1 for 5
    assert normalise_answer("\\left( 1 , 2 \\right)") == "(1,2)"
    assert normalise_answer("5\\text{ cm}.") == "5cm"
    assert normalise_answer(None) is None


def test_maj_missing_answers_do_not_vote_and_ungraded_winner_is_wrong():
    assert maj_at_k([None, None, "3"], [False, False, True], 3) is True  # one vote beats no votes
    assert maj_at_k([None, None], [False, False], 2) is False  # nobody answered
    assert maj_at_k(["3", "3", "4"], [None, None, True], 3) is False  # winner could not be graded
    assert maj_at_k(["3", "3", "4"], [None, True, False], 3) is True  # a graded member decides


def test_maj_rejects_bad_k():
    with pytest.raises(ValueError, match="k=4"):
        maj_at_k(["1", "2", "3"], [True, False, False], 4)
    with pytest.raises(ValueError, match="2 answers but 3 grades"):
        maj_at_k(["1", "2"], [True, False, False], 1)


# ---- aggregation ----
def test_dataset_metrics_hand_computed():
    problems = [
        ProblemSamples("p1", ["3", "3", None, "4"], [True, True, False, False], [10, 20, 30, 40], [False, False, True, False]),
        ProblemSamples("p2", ["1", "2", "2", "1"], [False, False, False, None], [5, 5, 5, 5], [False, False, False, False]),
    ]
    m = dataset_metrics(problems, n=4, k_values=[1, 2, 4])
    assert m["problems"] == 2 and m["samples"] == 8 and m["n"] == 4
    assert m["avg@4"] == pytest.approx((2 / 4 + 0 / 4) / 2)  # 0.25
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx((5 / 6 + 0) / 2)  # p1: 1 - C(2,2)/C(4,2)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@1"] == pytest.approx(0.5)  # p1 first "3" correct, p2 first "1" wrong
    assert m["maj@2"] == pytest.approx(0.5)  # p1 "3" x2; p2 tie "1"/"2" -> "1" (wrong)
    assert m["maj@4"] == pytest.approx(0.5)  # p1 "3" x2; p2 tie "1" x2 / "2" x2 -> "1" first
    assert m["format_rate"] == pytest.approx(7 / 8)
    assert m["mean_length"] == pytest.approx((100 + 20) / 8)
    assert m["truncation_rate"] == pytest.approx(1 / 8)
    assert m["ungraded"] == 1


def test_format_counts_boxes_and_lenient_answers_vote():
    # lenient grading: samples 0 and 2 are correct by their last number (no box), sample 1 is boxed and wrong
    p = ProblemSamples("p", ["42", "41", "42"], [True, False, True], [5, 5, 5], [False] * 3, boxed=[False, True, False])
    m = dataset_metrics([p], n=3, k_values=[1, 3])
    assert m["format_rate"] == pytest.approx(1 / 3)  # format still means a non-empty box
    assert m["maj@1"] == 1.0 and m["maj@3"] == 1.0  # the unboxed "42"s vote: the first one, then "42" x2 beats "41"
    assert ProblemSamples("q", ["3", None], [True, False], [1, 1], [False, False]).boxed == [True, False]  # default


def test_dataset_metrics_rejects_k_above_n_and_ragged_samples():
    p = ProblemSamples("p", ["1", "1"], [True, True], [1, 1], [False, False])
    with pytest.raises(ValueError, match="k=4 is larger than n=2"):
        dataset_metrics([p], n=2, k_values=[1, 4])
    with pytest.raises(ValueError, match="has 2 samples, expected n=3"):
        dataset_metrics([p], n=3, k_values=[1])


# ---- config ----
def test_default_k_values():
    assert default_k_values(1) == [1]
    assert default_k_values(4) == [1, 2, 4]
    assert default_k_values(6) == [1, 2, 4, 6]
    assert default_k_values(16) == [1, 2, 4, 8, 16]


def test_config_n_smaller_than_k_fails_naming_both():
    with pytest.raises(ValueError, match=r"k_values=\[1, 8\].*k=8 is larger than n=4"):
        EvalConfig(datasets=["math500"], n=4, k_values=[1, 8])
    # per-dataset n: the smallest n bounds k
    with pytest.raises(ValueError, match="n=1 \\(dataset 'math500'\\)"):
        EvalConfig(datasets=["aime24", "math500"], n=1, n_overrides=["aime24=16"], k_values=[4])
    cfg = EvalConfig(datasets=["aime24", "math500"], n=1, n_overrides=["aime24=16"])
    assert cfg.n_per_dataset() == {"aime24": 16, "math500": 1}
    assert cfg.k_for("aime24") == [1, 2, 4, 8, 16] and cfg.k_for("math500") == [1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n=0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"backend": "tgi"}, "backend='tgi'"),
        ({"prompt_template": "nope"}, "unknown prompt template 'nope'"),
        ({"n_overrides": ["gsm8k=3"]}, "not in datasets"),
        ({"n_overrides": ["math500"]}, "dataset=n"),
        ({"temperature": 0.0, "n": 4}, "greedy"),
        ({"models": ["a/b", "a/b"]}, "twice"),
        ({"model_labels": ["x", "y"]}, "2 names for 1 models"),
        ({"paper_table": "gpt5"}, "paper_table='gpt5'"),
        ({"grading": ["loose"]}, "grading=\\['loose'\\]"),
        ({"grading": ["strict", "strict"]}, "each once"),
        ({"grading": ["strict"], "accuracy_fallback_last_number": True}, "add lenient to grading"),
        ({"bootstrap_resamples": 500}, "bootstrap_resamples=500"),
        ({"bootstrap_seed": -1}, "bootstrap_seed=-1"),
        ({"vllm_lora": "merge"}, "vllm_lora='merge' is not one of merged, adapter"),
    ],
)
def test_config_bad_values_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvalConfig(**kwargs)


def test_gradings_and_the_sample_fingerprint():
    import hashlib
    import json

    assert EvalConfig().gradings() == ["strict"]
    assert EvalConfig(accuracy_fallback_last_number=True).gradings() == ["lenient"]
    both = EvalConfig(grading=["lenient", "strict"], accuracy_fallback_last_number=True)
    assert both.gradings() == ["lenient", "strict"]
    assert both.protocol()["grading"]["answer"] == "lenient: last non-empty \\boxed{} (else the last number); strict: last non-empty \\boxed{}"
    # single-grading runs keep the fingerprint they had before `grading` existed, so their samples.jsonl resumes
    for fallback in (False, True):
        keys = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 1024, "prompt_template": "chat", "seed": 0,
                "backend": "transformers", "fallback": fallback}
        old = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]
        assert EvalConfig(accuracy_fallback_last_number=fallback).sample_fingerprint() == old
    assert EvalConfig(grading=["lenient"]).sample_fingerprint() == EvalConfig(accuracy_fallback_last_number=True).sample_fingerprint()
    # a run that stores both grades is not mixed with one that stored one
    assert both.sample_fingerprint() not in {EvalConfig(grading=[g]).sample_fingerprint() for g in ("strict", "lenient")}
    # vllm_lora decides what the vLLM engine computes (merged weights or a LoRARequest): part of a vllm
    # run's fingerprint, not of a transformers run's (which always merges)
    assert EvalConfig(vllm_lora="adapter").sample_fingerprint() == EvalConfig().sample_fingerprint()
    merged, lora = (EvalConfig(backend="vllm", vllm_lora=v).sample_fingerprint() for v in ("merged", "adapter"))
    assert merged != lora and EvalConfig(backend="vllm", vllm_lora="merged").protocol()["vllm_lora"] == "merged"


def test_parser_yaml_and_repeated_model_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("models: [embedded:smollm2-135m-instruct]\ndatasets: [aime24, amc23]\nn: 2\n")
    cfg = parse_eval_args([str(recipe), "--model", "org/a", "--model", "./b", "--n", "3"])
    assert cfg.models == ["org/a", "./b"] and cfg.datasets == ["aime24", "amc23"] and cfg.n == 3
    cfg = parse_eval_args([str(recipe)])
    assert cfg.models == ["embedded:smollm2-135m-instruct"]
    recipe.write_text("datasets: [aime24]\nsamples_per_problem: 4\n")
    with pytest.raises(ValueError, match="samples_per_problem"):
        parse_eval_args([str(recipe)])


def test_shipped_eval_recipes_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "recipes" / "eval"
    recipes = sorted(root.glob("*.yaml"))
    assert {p.name for p in recipes} >= {"quick_cpu.yaml", "paper_protocol.yaml", "arith_heldout.yaml", "gsm8k_quick.yaml"}
    for path in recipes:
        parse_eval_args([str(path)])
    paper = parse_eval_args([str(root / "paper_protocol.yaml")])
    assert paper.datasets == ["aime24", "aime25", "amc23", "math500", "olympiadbench"]
    assert paper.n_per_dataset() == {"aime24": 16, "aime25": 16, "amc23": 1, "math500": 1, "olympiadbench": 1}
    held_out = parse_eval_args([str(root / "arith_heldout.yaml")])
    assert held_out.datasets == ["arith_test"] and held_out.limit is None  # all 600 problems
    assert (held_out.temperature, held_out.n, held_out.max_new_tokens) == (0.0, 1, 96)  # the training budget
    assert held_out.gradings() == ["lenient", "strict"]
    gsm8k = parse_eval_args([str(root / "gsm8k_quick.yaml"), "--grading", "strict"])
    assert (gsm8k.datasets, gsm8k.limit, gsm8k.temperature, gsm8k.max_new_tokens) == (["gsm8k_test"], 200, 0.0, 256)
    assert gsm8k.gradings() == ["strict"]  # the command line overrides the recipe's grading
