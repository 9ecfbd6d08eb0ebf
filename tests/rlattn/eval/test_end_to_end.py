"""rlattn.eval end to end: tiny offline models on 5 problems per set, every output, resume, bad inputs."""

import json
from pathlib import Path

import pytest

import rlattn.eval.runner as runner
from rlattn.data import load_dataset
from rlattn.eval import EvalConfig, ModelLoadError, evaluate, pass_at_k
from rlattn.rewards import BoundedGrader
from rlattn.testing import tiny_model

ALL_SETS = ["math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench", "gsm8k_test"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny random models saved to disk, and a LoRA adapter trained from nothing on the first."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    small = dict(hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=32)  # byte tokens: prompts are long
    for name, kwargs in (("tiny_a", {"seed": 0, **small}), ("tiny_b", {"seed": 1, **small, "hidden_size": 24})):
        model, tok = tiny_model("llama", **kwargs)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    base = AutoModelForCausalLM.from_pretrained(paths["tiny_a"])
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(root / "lora")
    paths["lora"] = str(root / "lora")
    return paths


def _config(out, models, **kw):
    defaults = dict(datasets=["gsm8k_test", "aime24"], limit=5, n=2, max_new_tokens=6, batch_size=8, progress=False, output_dir=str(out))
    defaults.update(kw)
    return EvalConfig(models=models, **defaults)


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_tiny_model_on_every_set_writes_every_output(checkpoints, tmp_path):
    out = tmp_path / "eval"
    report = evaluate(_config(out, [checkpoints["tiny_a"]], datasets=ALL_SETS))
    label = report.labels[0]
    assert label == "tiny_a"

    # samples.jsonl: one record per (dataset, problem, sample), with every field
    records = _read_jsonl(out / "samples.jsonl")
    assert len(records) == len(ALL_SETS) * 5 * 2
    keys = {(r["dataset"], r["problem_id"], r["sample_index"]) for r in records}
    assert len(keys) == len(records) and {r["model"] for r in records} == {checkpoints["tiny_a"]}
    for r in records:
        assert {"problem_id", "completion", "answer", "gold", "correct", "length", "truncated"} <= set(r)
        assert 0 <= r["length"] <= 6 and (r["length"] == 6 or not r["truncated"])  # truncated -> full budget
    assert report.counts == {"reused": 0, "generated": len(records)}

    # report.json: every dataset with every metric, recomputable from the samples
    data = json.loads((out / "report.json").read_text())
    assert data["protocol"]["n"] == {d: 2 for d in ALL_SETS} and data["protocol"]["max_new_tokens"] == 6
    for d in ALL_SETS:
        m = data["results"][label][d]
        assert set(m) >= {"avg@2", "pass@1", "pass@2", "maj@1", "maj@2", "format_rate", "mean_length", "truncation_rate", "ungraded"}
        mine = [r for r in records if r["dataset"] == d]
        assert m["problems"] == 5 and m["samples"] == 10
        assert m["mean_length"] == pytest.approx(sum(r["length"] for r in mine) / 10)
        assert m["truncation_rate"] == pytest.approx(sum(r["truncated"] for r in mine) / 10)
        assert m["avg@2"] == pytest.approx(sum(bool(r["correct"]) for r in mine) / 10)

    # report.md: protocol, summary, per-dataset tables, plots
    md = (out / "report.md").read_text()
    for needle in ("## Protocol", "| temperature | 0.6 |", "| top_p | 0.95 |", "| max_new_tokens | 6 |", "`chat`",
                   "## Summary: avg@n (%)", "### olympiadbench: 5 problems x n=2", "### minerva_math: 5 problems x n=2",
                   "pass@2 (%)", "maj@2 (%)", "truncated: no EOS", "![accuracy](plots/accuracy.png)",
                   "![pass_at_k](plots/pass_at_k.png)", "None: every sample was graded"):
        assert needle in md, needle
    for png in ("accuracy.png", "pass_at_k.png"):
        raw = (out / "plots" / png).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5000


def test_base_model_and_lora_adapter_side_by_side(checkpoints, tmp_path):
    report = evaluate(_config(tmp_path, [checkpoints["tiny_a"], checkpoints["lora"]], datasets=["gsm8k_test"], plots=False))
    assert report.labels == ["tiny_a", "lora"]
    kinds = {m["label"]: (m["kind"], m["base"]) for m in report.models}
    assert kinds["tiny_a"] == ("checkpoint", None) and kinds["lora"] == ("adapter", checkpoints["tiny_a"])
    records = _read_jsonl(tmp_path / "samples.jsonl")
    by_model = {spec: [r["completion"] for r in records if r["model"] == spec] for spec in (checkpoints["tiny_a"], checkpoints["lora"])}
    assert by_model[checkpoints["tiny_a"]] != by_model[checkpoints["lora"]]  # the adapter changed the model
    md = (tmp_path / "report.md").read_text()
    assert "| lora | 0.0 (±0) |" in md and "| **tiny_a** | `" in md and "adapter on `" in md


class _FlakyGrader(BoundedGrader):
    """A real grader, except the answer UNGRADABLE 'times out' (grade None), as a hung worker would."""

    def grade_batch(self, pairs, timeout=None):
        pairs = list(pairs)
        real = super().grade_batch([p for p in pairs if "UNGRADABLE" not in p[1]], timeout=timeout)
        it = iter(real)
        return [None if "UNGRADABLE" in p[1] else next(it) for p in pairs]


def test_scripted_answers_give_hand_computed_scores_and_deltas(checkpoints, tmp_path, monkeypatch):
    """Generation replaced by a script, so the scores are known: grading, aggregation and deltas."""
    golds = {row["prompt"][-1]["content"]: row["solution"] for row in load_dataset("gsm8k_test", limit=5)}
    order = list(golds)

    def scripted(model, tokenizer, prompts, **kwargs):
        from rlattn.eval import Generation

        out = []
        for prompt in prompts:
            problem = prompt[-1]["content"]
            i, gold = order.index(problem), golds[problem]
            if model.config.hidden_size == 16:  # model A: problems 0-1 right, problem 4 ungradable
                text = f"\\boxed{{{gold}}}" if i < 2 else ("\\boxed{UNGRADABLE}" if i == 4 else "\\boxed{-1}")
            else:  # model B: problems 0-3 right, problem 4 unanswered and truncated
                text = f"so \\boxed{{{gold}}}" if i < 4 else "I think"
            out.append(Generation(text=text, length=10 if i < 4 else 6, truncated=i == 4))
        return out

    monkeypatch.setattr(runner, "generate_batch", scripted)
    cfg = _config(tmp_path, [checkpoints["tiny_a"], checkpoints["tiny_b"]], datasets=["gsm8k_test"], n=2, model_labels=["A", "B"])
    with _FlakyGrader(num_workers=1) as grader:
        report = evaluate(cfg, grader=grader)
    a, b = report.results["A"]["gsm8k_test"], report.results["B"]["gsm8k_test"]
    assert a["avg@2"] == pytest.approx(2 / 5) and b["avg@2"] == pytest.approx(4 / 5)
    assert a["pass@2"] == pytest.approx(2 / 5) and a["maj@2"] == pytest.approx(2 / 5)
    assert a["format_rate"] == 1.0 and b["format_rate"] == pytest.approx(8 / 10)
    assert a["ungraded"] == 2 and b["ungraded"] == 0
    assert b["truncation_rate"] == pytest.approx(2 / 10) and b["mean_length"] == pytest.approx((8 * 10 + 2 * 6) / 10)
    md = (tmp_path / "report.md").read_text()
    assert "| B | 80.0 (+40.0) |" in md
    assert "| format: non-empty \\boxed{} (%) | 100.0 | 80.0 (-20.0) |" in md
    assert "2 sample(s) could not be graded" in md and "`UNGRADABLE`" in md
    listed = json.loads((tmp_path / "report.json").read_text())["ungraded"]
    assert sorted(u["sample_index"] for u in listed) == [0, 1] and {u["model_label"] for u in listed} == {"A"}


def test_resume_after_a_killed_run_reuses_graded_samples(checkpoints, tmp_path, monkeypatch):
    generated = []
    real_generate = runner.generate_batch

    def counting(model, tokenizer, prompts, **kwargs):
        generated.append(len(prompts))
        return real_generate(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", counting)
    cfg = _config(tmp_path, [checkpoints["tiny_a"]], batch_size=4)  # 2 sets x 5 problems x n=2 = 20 samples, 5 batches

    class Killed(Exception):
        pass

    def kill_after_two_batches(records):
        if len(generated) == 2:
            raise Killed

    with pytest.raises(Killed):
        evaluate(cfg, on_batch=kill_after_two_batches)
    samples = tmp_path / "samples.jsonl"
    assert len(_read_jsonl(samples)) == 8
    assert not (tmp_path / "report.md").exists()
    with samples.open("a") as fh:  # a write cut short by the kill
        fh.write('{"model": "' + checkpoints["tiny_a"] + '", "dataset": "aime24", "problem_id": "2024-I-')
    first_run = _read_jsonl_safe(samples)[:8]

    generated.clear()
    report = evaluate(cfg)
    assert sum(generated) == 12  # only the missing samples
    assert report.counts == {"reused": 8, "generated": 12}
    records = _read_jsonl(samples)
    assert len(records) == 20 and records[:8] == first_run  # the kept samples are the same records
    assert {(r["dataset"], r["problem_id"], r["sample_index"]) for r in records} == {
        (d, pid, s) for d in ("gsm8k_test", "aime24") for pid in [row["id"] for row in load_dataset(d, limit=5)] for s in (0, 1)
    }
    assert (tmp_path / "report.md").exists() and (tmp_path / "plots" / "pass_at_k.png").exists()

    # a complete run: nothing generated, the model not even loaded
    generated.clear()
    monkeypatch.setattr(runner, "load_eval_model", lambda *a, **k: pytest.fail("a fully graded model was loaded"))
    assert evaluate(cfg).counts == {"reused": 20, "generated": 0} and generated == []

    # samples drawn under other settings are not mixed in
    with pytest.raises(ValueError, match="other settings.*resume: false"):
        evaluate(_config(tmp_path, [checkpoints["tiny_a"]], temperature=1.0))


def _read_jsonl_safe(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_more_samples_extend_an_earlier_run(checkpoints, tmp_path):
    evaluate(_config(tmp_path, [checkpoints["tiny_a"]], datasets=["aime24"], n=1, plots=False))
    report = evaluate(_config(tmp_path, [checkpoints["tiny_a"]], datasets=["aime24"], n=2, plots=False))
    assert report.counts == {"reused": 5, "generated": 5}
    assert report.results[report.labels[0]]["aime24"]["samples"] == 10


# ---- bad inputs ----
def test_unknown_dataset_fails_before_any_model_loads(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_eval_model", lambda *a, **k: pytest.fail("loaded a model before checking data"))
    with pytest.raises(ValueError, match="datasets entry 'math5000'.*did you mean 'math500'"):
        evaluate(_config(tmp_path, [checkpoints["tiny_a"]], datasets=["aime24", "math5000"]))


def test_missing_and_unreadable_checkpoints_name_the_path(checkpoints, tmp_path):
    missing = str(tmp_path / "no" / "such" / "ckpt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory: .*no/such/ckpt"):
        evaluate(_config(tmp_path / "o1", [checkpoints["tiny_a"], missing]))

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir has neither config.json"):
        evaluate(_config(tmp_path / "o2", [str(empty)]))

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load checkpoint from .*corrupt"):
        evaluate(_config(tmp_path / "o3", [str(corrupt)]))

    broken_weights = tmp_path / "broken_weights"
    broken_weights.mkdir()
    for f in Path(checkpoints["tiny_a"]).iterdir():
        (broken_weights / f.name).write_bytes(f.read_bytes()[:100] if f.suffix == ".safetensors" else f.read_bytes())
    with pytest.raises(ModelLoadError, match="broken_weights"):
        evaluate(_config(tmp_path / "o4", [str(broken_weights)]))

    bad_adapter = tmp_path / "bad_adapter"
    bad_adapter.mkdir()
    (bad_adapter / "adapter_config.json").write_text('{"r": 4}')
    with pytest.raises(ModelLoadError, match="base_model_name_or_path"):
        evaluate(_config(tmp_path / "o5", [str(bad_adapter)]))


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vllm is installed here: the backend is accepted")
def test_vllm_backend_without_vllm_is_refused_clearly(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="backend='vllm' needs vLLM, which is not installed"):
        evaluate(_config(tmp_path, [checkpoints["tiny_a"]], backend="vllm"))


def test_vllm_backend_gets_the_lora_choice(checkpoints, tmp_path, monkeypatch):
    """The runner hands ``vllm_lora`` to the engine loader (which the vLLM-marked tests run for real)."""
    seen = []

    def fake_load(spec, **kwargs):
        seen.append((spec, kwargs["lora"]))
        raise ModelLoadError("stop here")

    monkeypatch.setattr(runner, "check_backend", lambda backend: None)
    monkeypatch.setattr(runner, "load_vllm_model", fake_load)
    for choice in ("merged", "adapter"):
        with pytest.raises(ModelLoadError, match="stop here"):
            evaluate(_config(tmp_path / choice, [checkpoints["lora"]], backend="vllm", vllm_lora=choice))
    assert seen == [(checkpoints["lora"], "merged"), (checkpoints["lora"], "adapter")]


def test_merged_copy_of_an_adapter_equals_the_merged_model(checkpoints, tmp_path):
    """What ``vllm_lora: merged`` gives the engine: a checkpoint dir whose model computes what the
    transformers backend's merged adapter computes, in the base checkpoint's dtype for ``auto``."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from rlattn.eval.generate import _merge_adapter
    from rlattn.models import load_model_and_tokenizer

    out = _merge_adapter(checkpoints["lora"], checkpoints["lora"], "float32")
    try:
        copy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ref = load_model_and_tokenizer(checkpoints["lora"], dtype="float32").model
        base = load_model_and_tokenizer(checkpoints["tiny_a"], dtype="float32").model
        ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
        with torch.no_grad():
            got, want, plain = (m(ids).logits for m in (copy, ref, base))
        assert (want - plain).abs().max() > 1e-3, "the adapter does not change the logits: the test could not tell"
        assert torch.allclose(got, want, atol=1e-6, rtol=0)
        assert any(Path(out, f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    finally:
        shutil.rmtree(out)
    bf16_base = tmp_path / "bf16_base"
    AutoModelForCausalLM.from_pretrained(checkpoints["tiny_a"], dtype=torch.bfloat16).save_pretrained(bf16_base)
    shutil.copytree(checkpoints["lora"], tmp_path / "lora_bf16")
    cfg_path = tmp_path / "lora_bf16" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(bf16_base)
    cfg_path.write_text(json.dumps(cfg))
    for file in Path(checkpoints["tiny_a"]).glob("tokenizer*"):
        shutil.copy(file, bf16_base / file.name)
    out = _merge_adapter(str(tmp_path / "lora_bf16"), str(tmp_path / "lora_bf16"), "auto")
    try:
        from safetensors import safe_open

        with safe_open(str(Path(out) / "model.safetensors"), "pt") as f:  # auto: the base checkpoint's dtype
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    finally:
        shutil.rmtree(out)


def test_pass_at_k_in_the_report_matches_the_estimator(checkpoints, tmp_path, monkeypatch):
    """n=4 with a script that gets exactly 1 of 4 samples right: pass@2 = 1 - C(3,2)/C(4,2) = 0.5."""
    from rlattn.eval import Generation

    calls = {"i": 0}

    def one_in_four(model, tokenizer, prompts, **kwargs):
        out = []
        for _ in prompts:
            text = "\\boxed{204}" if calls["i"] % 4 == 0 else "\\boxed{0}"
            calls["i"] += 1
            out.append(Generation(text=text, length=3, truncated=False))
        return out

    monkeypatch.setattr(runner, "generate_batch", one_in_four)
    cfg = _config(tmp_path, [checkpoints["tiny_a"]], datasets=["aime24"], limit=1, n=4, batch_size=4, plots=False, paper_table="qwen3_4b_1k")
    m = evaluate(cfg).results["tiny_a"]["aime24"]  # aime24's first answer is 204
    assert m["avg@4"] == 0.25 and m["pass@2"] == pytest.approx(pass_at_k(4, 1, 2)) == pytest.approx(0.5)
    assert m["pass@4"] == 1.0 and m["maj@4"] == 0.0  # "0" x3 outvotes "204"
    md = (tmp_path / "report.md").read_text()
    assert "| paper: coupled | 10.7 | 7.8 | 57.4 | 75.8 | 44.1 | 39.2 |" in md  # Table 4, Qwen3-4B-Base 1K
    assert "| measured: tiny_a | 25.0 | - | - | - | - | - |" in md


# ---- graded answers, both gradings, paired differences, the held-out arithmetic set ----
def _scripted(dataset, limit, answer_of):
    """A generate_batch stand-in: ``answer_of(model_name, problem_index, gold) -> completion text``."""
    from rlattn.eval import Generation

    rows = load_dataset(dataset, limit=limit)
    index = {row["prompt"][-1]["content"]: (i, row["solution"]) for i, row in enumerate(rows)}

    def generate(model, tokenizer, prompts, **kwargs):
        name = "A" if model.config.hidden_size == 16 else "B"
        return [Generation(text=answer_of(name, *index[p[-1]["content"]]), length=5, truncated=False) for p in prompts]

    return generate


def test_lenient_answers_correct_by_the_last_number_vote_in_maj(checkpoints, tmp_path, monkeypatch):
    """The README case: lenient grading, a model whose samples are right only by the last-number
    fallback (no box). maj@1 used to read 0.0 beside pass@1 = 60.0; it must equal pass@1."""
    monkeypatch.setattr(runner, "generate_batch", _scripted("gsm8k_test", 5, lambda m, i, gold: f"so it is {gold if i < 3 else -1}"))
    cfg = _config(tmp_path, [checkpoints["tiny_a"]], datasets=["gsm8k_test"], n=1, temperature=0.0, accuracy_fallback_last_number=True)
    m = evaluate(cfg).results["tiny_a"]["gsm8k_test"]
    assert m["avg@1"] == m["pass@1"] == m["maj@1"] == pytest.approx(3 / 5)
    assert m["format_rate"] == 0.0  # no sample has a box
    records = _read_jsonl(tmp_path / "samples.jsonl")
    golds = [row["solution"] for row in load_dataset("gsm8k_test", limit=5)]
    assert [r["answer"] for r in records] == golds[:3] + ["-1", "-1"]  # the stored answer is the graded one
    assert all(r["boxed"] is False and r["grades"] == {"lenient": {"answer": r["answer"], "correct": r["correct"]}} for r in records)


def test_old_samples_without_boxed_resume_and_vote_with_the_graded_answer(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "generate_batch", _scripted("gsm8k_test", 5, lambda m, i, gold: f"\\boxed{{{gold}}}" if i == 0 else f"so {gold}"))
    cfg = _config(tmp_path, [checkpoints["tiny_a"]], datasets=["gsm8k_test"], n=1, temperature=0.0, accuracy_fallback_last_number=True)
    evaluate(cfg)
    samples = tmp_path / "samples.jsonl"
    old = []
    for r in _read_jsonl(samples):  # as the evaluator wrote them before `boxed` / `grades`: no answer without a box
        r = {k: v for k, v in r.items() if k not in ("boxed", "grades")}
        r["answer"] = r["answer"] if r["completion"].startswith("\\boxed") else None
        old.append(r)
    samples.write_text("".join(json.dumps(r) + "\n" for r in old))
    monkeypatch.setattr(runner, "generate_batch", lambda *a, **k: pytest.fail("a stored sample was generated again"))
    report = evaluate(cfg)
    assert report.counts == {"reused": 5, "generated": 0}
    m = report.results["tiny_a"]["gsm8k_test"]
    assert m["avg@1"] == m["maj@1"] == 1.0 and m["format_rate"] == pytest.approx(1 / 5)
    upgraded = _read_jsonl(samples)
    assert [r["boxed"] for r in upgraded] == [True, False, False, False, False]
    assert [r["answer"] for r in upgraded] == [row["solution"] for row in load_dataset("gsm8k_test", limit=5)]


def test_paired_differences_hand_computed_for_both_gradings(checkpoints, tmp_path, monkeypatch):
    """arith_test, 6 problems. A: boxed and right on 0-2. B: boxed and right on 0-1, right without a
    box on 3-4, wrong on 2 and 5. Lenient d = [0, 0, -1, +1, +1, 0]; strict d = [0, 0, -1, 0, 0, 0]."""

    def answer_of(model, i, gold):
        if model == "A":
            return f"\\boxed{{{gold}}}" if i < 3 else "\\boxed{0}"
        return f"\\boxed{{{gold}}}" if i < 2 else (f"so it is {gold}" if i in (3, 4) else "\\boxed{0}")

    monkeypatch.setattr(runner, "generate_batch", _scripted("arith_test", 6, answer_of))
    cfg = _config(tmp_path, [checkpoints["tiny_a"], checkpoints["tiny_b"]], model_labels=["A", "B"], datasets=["arith_test"],
                  limit=6, n=1, temperature=0.0, grading=["lenient", "strict"], plots=False)
    report = evaluate(cfg)
    assert report.gradings == ["lenient", "strict"]
    assert report.metric("B", "arith_test", "avg@1") == report.metric("B", "arith_test", "avg@1", grading="lenient") == pytest.approx(4 / 6)
    assert report.metric("B", "arith_test", "avg@1", grading="strict") == pytest.approx(2 / 6)
    assert report.metric("B", "arith_test", "maj@1", grading="lenient") == pytest.approx(4 / 6)
    rows = {r["grading"]: r for r in report.paired["rows"]}
    assert set(rows) == {"lenient", "strict"} and {r["model"] for r in rows.values()} == {"B"}
    lenient, strict = rows["lenient"], rows["strict"]
    assert lenient["delta"] == pytest.approx(1 / 6) and (lenient["wins"], lenient["losses"], lenient["ties"]) == (2, 1, 3)
    assert lenient["ci_low"] < 0 < lenient["ci_high"] and lenient["p_value"] == 1.0  # 2 * P(X <= 1 | 3) = 1
    # strict: d has one -1 in 6, the resample mean is -X/6 with X ~ Binomial(6, 1/6): P(X = 0) = 0.33 > 2.5 %,
    # P(X >= 4) = 0.009 < 2.5 % < P(X >= 3) = 0.062, so the interval is [-3/6, 0]
    assert strict["delta"] == pytest.approx(-1 / 6) and (strict["ci_low"], strict["ci_high"]) == (-0.5, 0.0)
    assert (strict["wins"], strict["losses"], strict["ties"], strict["p_value"]) == (0, 1, 5, 1.0)

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["paired"]["baseline"] == "A" and data["paired"]["resamples"] == 10_000 and data["paired"]["seed"] == 0
    assert data["paired"]["rows"] == report.paired["rows"] and set(data["results_by_grading"]) == {"lenient", "strict"}
    md = (tmp_path / "report.md").read_text()
    for needle in ("## Paired differences vs A", "| dataset | model | grading | Δ (points) | 95 % CI | wins / losses / ties | p |",
                   "| arith_test | B | strict | -16.7 | [-50.0, ±0] | 0 / 1 / 5 | 1.000 |", "| arith_test | B | lenient | +16.7 | [",
                   "Grading **lenient** (headline):", "Grading **strict**:", "| avg@1 (%, strict) | 50.0 | 33.3 (-16.7) |",
                   "| maj@1 (%, lenient) | 50.0 | 66.7 (+16.7) |", "| format: non-empty \\boxed{} (%) | 100.0 | 66.7 (-33.3) |",
                   "answer = lenient: last non-empty \\boxed{} (else the last number); strict: last non-empty \\boxed{}"):
        assert needle in md, needle
    assert md.index("## Paired differences") < md.index("## Per dataset")


def test_arith_test_greedy_with_both_gradings_on_tiny_models(checkpoints, tmp_path):
    """The generated held-out set end to end: real (tiny) generation, greedy, both gradings, two models."""
    cfg = _config(tmp_path, [checkpoints["tiny_a"], checkpoints["tiny_b"]], datasets=["arith_test"], limit=4, n=1,
                  temperature=0.0, grading=["lenient", "strict"], plots=False)
    report = evaluate(cfg)
    records = _read_jsonl(tmp_path / "samples.jsonl")
    assert len(records) == 2 * 4 and {r["dataset"] for r in records} == {"arith_test"}
    for r in records:
        assert set(r["grades"]) == {"lenient", "strict"} and isinstance(r["boxed"], bool)
        assert (r["answer"], r["correct"]) == (r["grades"]["lenient"]["answer"], r["grades"]["lenient"]["correct"])
    assert [row["solution"] for row in load_dataset("arith_test", limit=4)] == [r["gold"] for r in records[:4]]
    assert [(r["grading"], r["model"], r["problems"]) for r in report.paired["rows"]] == [("lenient", "tiny_b", 4), ("strict", "tiny_b", 4)]
    assert report.protocol["grading"]["gradings"] == ["lenient", "strict"]
    assert "## Paired differences vs tiny_a" in (tmp_path / "report.md").read_text()
    # greedy is deterministic: a fresh run draws the same text
    again = evaluate(_config(tmp_path / "again", [checkpoints["tiny_a"]], datasets=["arith_test"], limit=4, n=1,
                             temperature=0.0, grading=["lenient", "strict"], plots=False))
    assert [r["completion"] for r in _read_jsonl(tmp_path / "again" / "samples.jsonl")] == [r["completion"] for r in records[:4]]
    assert again.paired["rows"] == []  # one model: nothing to pair
