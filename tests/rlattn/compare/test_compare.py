"""The comparison runner on a tiny model: every cell of the report, a strategy against itself is a
paired difference of exactly 0, a rerun reuses finished runs, an interrupted run restarts, a bad
grid fails before any training."""

import json
from pathlib import Path

import pytest

from rlattn.compare import CompareConfig, check_grid, run_comparison

ROOT = Path(__file__).resolve().parents[3]
BUDGET = ("--model_name_or_path tiny:llama-h32-l2 --max_steps 2 --per_device_train_batch_size 4 --num_generations 4 "
          "--max_completion_length 8 --reward_funcs rlattn.testing:digit_reward --reward_weights 1.0 --dtype float32 "
          "--bf16 false --use_peft false --save_strategy no --attn_fai_horizon 2 8 --dataset_limit 16 --credit_log_samples 2")
EVAL = """\
models: [tiny:llama-h32-l2]
datasets: [arith_test]
limit: 8
n: 1
temperature: 0.0
top_p: 1.0
max_new_tokens: 8
prompt_template: chat_example
dtype: float32
batch_size: 8
grading: [lenient, strict]
bootstrap_resamples: 2000
progress: false
plots: false
"""


def config(tmp_path, **kw):
    (tmp_path / "eval.yaml").write_text(EVAL)
    base = dict(compare_base_recipe=str(ROOT / "recipes" / "anchor_credit.yaml"),
                compare_strategies=["uniform", "again=--credit_strategy uniform", "coupled"], compare_baseline="uniform",
                compare_seeds=[0, 1], compare_budget=BUDGET, compare_eval_recipe=str(tmp_path / "eval.yaml"),
                output_dir=str(tmp_path / "cmp"))
    base.update(kw)
    return CompareConfig(**base)


def test_bad_grids_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="compare_seeds is empty"):
        config(tmp_path, compare_seeds=[])
    with pytest.raises(ValueError, match="compare_baseline='nope'"):
        config(tmp_path, compare_baseline="nope")
    with pytest.raises(ValueError, match="'copuled'.*credit_strategy='copuled'"):
        check_grid(config(tmp_path, compare_strategies=["uniform", "copuled"]))
    with pytest.raises(ValueError, match="budget is unset"):
        check_grid(config(tmp_path, compare_budget=BUDGET.replace("--max_steps 2", "--max_steps -1")))
    assert not (tmp_path / "cmp" / "runs").exists()
    runs = check_grid(config(tmp_path))
    assert [(r.variant.label, r.seed) for r in runs] == [(l, s) for l in ("uniform", "again", "coupled") for s in (0, 1)]
    assert runs[2].variant.overrides == ("--credit_strategy", "uniform")


@pytest.mark.slow
def test_grid_report_pairing_and_resume(tmp_path):
    cfg = config(tmp_path)
    lines = []
    report = run_comparison(cfg, log=lines.append)
    assert sum("trained in" in l for l in lines) == 6
    for grading in ("lenient", "strict"):
        acc = report["accuracy"][grading]["arith_test"]
        assert set(acc) == {"start", "uniform", "again", "coupled"}
        for label in ("uniform", "again", "coupled"):
            assert set(acc[label]["per_seed"]) == {"0", "1"} and len(acc[label]["ci"]) == 2
        paired = report["paired"][grading]["arith_test"]
        assert set(paired) == {"again", "coupled"}
        same = paired["again"]  # uniform trained twice, same seeds: the same policy, the same answers
        assert same["delta"] == 0.0 and same["ci"] == [0.0, 0.0] and same["seeds_equal"] == 2
    assert set(report["cost"]) == {f"{l}/seed{s}" for l in ("uniform", "again", "coupled") for s in (0, 1)}
    assert all(c["wall_s"] > 0 for c in report["cost"].values())
    assert report["curves"]["coupled/seed0"]["reward"]
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| coupled |" in md and "paired Δ vs baseline" in md and (tmp_path / "cmp" / "plots" / "reward.png").is_file()

    # a rerun reuses every finished run; a run without its marker (interrupted) is restarted
    (tmp_path / "cmp" / "runs" / "coupled" / "seed1" / "compare_done.json").unlink()
    lines.clear()
    again = run_comparison(cfg, log=lines.append)
    assert sum(": reused" in l for l in lines) == 5
    assert sum("interrupted run" in l for l in lines) == 1 and sum("trained in" in l for l in lines) == 1
    assert again["paired"]["lenient"]["arith_test"]["again"]["delta"] == 0.0
