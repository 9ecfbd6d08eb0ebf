"""Difficulty filtering: pass rates per problem, the band, the written set, the histogram."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlattn.analysis import difficulty
from rlattn.analysis.difficulty import DifficultyConfig, filter_difficulty, pass_rate_histogram
from rlattn.eval.generate import Generation

ROOT = Path(__file__).resolve().parents[3]


def test_histogram_counts_solved_of_k():
    assert pass_rate_histogram([0.0, 0.25, 0.25, 1.0], 4) == {"0/4": 1, "1/4": 2, "2/4": 0, "3/4": 0, "4/4": 1}


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="band="):
        DifficultyConfig(band=[0.9, 0.1])
    with pytest.raises(ValueError, match="k=0"):
        DifficultyConfig(k=0)
    with pytest.raises(ValueError, match="backend='sglang'"):
        DifficultyConfig(backend="sglang")
    with pytest.raises(ValueError, match="dataset_skip=-1"):
        DifficultyConfig(dataset_skip=-1)


def test_skip_extends_an_earlier_run_without_overlap(tmp_path, monkeypatch):
    # limit 6 in one run == limit 4, then skip 4 + limit 2: same problems, same per-batch seeds
    seen = []

    def fake_generate(model, tokenizer, prompts, *, seed, **kw):
        seen.append((tuple(prompts), seed))
        return [Generation(text="\\boxed{-1}", length=3, truncated=False) for _ in prompts]

    monkeypatch.setattr("rlattn.eval.generate.generate_batch", fake_generate)
    common = dict(dataset_name="arith_train", model="tiny:llama-h32-l2", k=2, batch_size=4, band=[0, 1])
    filter_difficulty(DifficultyConfig(dataset_limit=6, output=str(tmp_path / "all.jsonl"), **common))
    full, seen[:] = list(seen), []
    filter_difficulty(DifficultyConfig(dataset_limit=4, output=str(tmp_path / "a.jsonl"), **common))
    filter_difficulty(DifficultyConfig(dataset_limit=2, dataset_skip=4, output=str(tmp_path / "b.jsonl"), **common))
    assert seen == full and len(full) == 3  # 2 problems x 2 samples per call
    ids = lambda name: [json.loads(l)["id"] for l in (tmp_path / name).read_text().splitlines()]
    assert ids("a.jsonl") + ids("b.jsonl") == ids("all.jsonl") and len(set(ids("all.jsonl"))) == 6


def test_rates_band_and_output(tmp_path, monkeypatch):
    # 4 problems, k = 4; the fake sampler answers problem i correctly in i of its 4 samples
    # (arith rows: the gold answer is the row's solution), so the pass rates are 0, 1/4, 2/4, 3/4.
    from rlattn.data import load_dataset

    rows = load_dataset("arith_train", limit=4, seed=None)
    golds = list(rows["solution"])
    calls = []

    def fake_generate(model, tokenizer, prompts, **kw):
        calls.append(len(prompts))
        out = []
        for j, _ in enumerate(prompts):
            problem, sample = divmod(j, 4)
            text = f"\\boxed{{{golds[problem]}}}" if sample < problem else "\\boxed{-1}"
            out.append(Generation(text=text, length=3, truncated=False))
        return out

    monkeypatch.setattr("rlattn.eval.generate.generate_batch", fake_generate)
    cfg = DifficultyConfig(dataset_name="arith_train", dataset_limit=4, dataset_seed=None, model="tiny:llama-h32-l2",
                           k=4, batch_size=16, band=[0.25, 0.5], output=str(tmp_path / "kept.jsonl"))
    summary = filter_difficulty(cfg)
    assert calls == [16]  # 4 problems x 4 samples in one call
    assert summary["histogram"] == {"0/4": 1, "1/4": 1, "2/4": 1, "3/4": 1, "4/4": 0}
    assert summary["kept"] == 2 and summary["mean_pass_rate"] == pytest.approx(1.5 / 4)
    kept = [json.loads(l) for l in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [r["pass_rate"] for r in kept] == [0.25, 0.5] and [r["answer"] for r in kept] == golds[1:3]
    again = load_dataset(str(tmp_path / "kept.jsonl"))  # the filtered set trains like any local file
    assert list(again["solution"]) == golds[1:3] and "pass_rate" in again.column_names
    assert json.loads((tmp_path / "kept.jsonl.summary.json").read_text())["kept"] == 2


def test_script_runs_on_a_tiny_model(tmp_path):
    out = tmp_path / "f.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "filter_difficulty.py"), "--dataset_name", "arith_test",
                           "--dataset_limit", "3", "--model", "tiny:llama-h32-l2", "--k", "2", "--max_new_tokens", "4",
                           "--band", "0", "1", "--output", str(out), "--dtype", "float32"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept 3 of 3 problems" in proc.stdout
    assert len(out.read_text().splitlines()) == 3
