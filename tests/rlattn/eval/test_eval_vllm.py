"""``backend: vllm`` in rlattn.eval, on the embedded SmolLM2-135M (rlattn's vLLM CPU engine).

Marked ``vllm``: runs only where ``import vllm`` works (the venv from scripts/setup_vllm_cpu.sh),
skipped with the reason everywhere else. Each test starts its own engine (~15-30 s on 2 cores).

    TRL_EXPERIMENTAL_SILENCE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/rlattn/test_eval_vllm.py
"""

import json
import os
from pathlib import Path

import pytest

from rlattn.rollouts.vllm_cpu import vllm_available

OK, WHY = vllm_available()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not OK, reason=f"vllm not importable here ({WHY})")]

MODEL = "embedded:smollm2-135m-instruct"
TOKENS = 16


def _children() -> list[str]:
    """Live (not zombie) processes whose parent is this process: ``pid name`` strings."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) != me or rest[0] == "Z":
            continue
        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if "resource_tracker" in cmdline:  # multiprocessing's own helper, shared by every spawn
            continue
        found.append(f"{entry.name} {cmdline[:200]}")
    return found


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_evaluate_embedded_model_with_vllm(tmp_path, monkeypatch):
    import rlattn.eval.runner as runner
    from rlattn.eval import EvalConfig, evaluate

    out = tmp_path / "eval"
    config = EvalConfig(models=[MODEL], datasets=["gsm8k_test"], limit=2, n=2, max_new_tokens=TOKENS, temperature=1.0,
                        backend="vllm", batch_size=8, progress=False, plots=False, output_dir=str(out), grade_workers=1)
    report = evaluate(config)
    assert _children() == [], "a process (vLLM engine or grader) outlived evaluate()"

    records = _read_jsonl(out / "samples.jsonl")
    assert len(records) == 2 * 2 and report.counts == {"reused": 0, "generated": 4}
    assert {(r["problem_id"], r["sample_index"]) for r in records} == {(p, s) for p in {r["problem_id"] for r in records} for s in (0, 1)}
    for r in records:
        assert {"completion", "answer", "gold", "correct", "length", "truncated", "fingerprint"} <= set(r)
        assert isinstance(r["completion"], str) and r["completion"].strip()
        assert 1 <= r["length"] <= TOKENS
        # vLLM's finish reason 'length' <=> no EOS within the budget <=> all TOKENS tokens used
        assert r["truncated"] == (r["length"] == TOKENS)
    by_problem = {}
    for r in records:
        by_problem.setdefault(r["problem_id"], []).append(r["completion"])
    assert any(len(set(c)) == 2 for c in by_problem.values()), "n=2 samples came back identical at temperature 1"

    data = json.loads((out / "report.json").read_text())
    label = report.labels[0]
    assert data["protocol"]["backend"] == "vllm" and data["models"][0]["kind"] == "embedded"
    m = data["results"][label]["gsm8k_test"]
    assert m["problems"] == 2 and m["samples"] == 4
    assert m["mean_length"] == pytest.approx(sum(r["length"] for r in records) / 4)
    assert m["truncation_rate"] == pytest.approx(sum(r["truncated"] for r in records) / 4)
    assert "| backend | vllm |" in (out / "report.md").read_text()

    # resume: every sample is stored, so no engine is started again
    monkeypatch.setattr(runner, "load_vllm_model", lambda *a, **k: pytest.fail("started an engine for a fully graded model"))
    again = evaluate(config)
    assert again.counts == {"reused": 4, "generated": 0}


def test_greedy_vllm_text_equals_transformers():
    """float32 on both sides, temperature 0: the same prompt gives the same completion."""
    from rlattn.data import load_dataset
    from rlattn.eval import generate_batch, load_eval_model
    from rlattn.eval.generate import load_vllm_model

    prompts = [row["prompt"] for row in load_dataset("gsm8k_test", template="chat", limit=2)]
    kw = dict(max_new_tokens=TOKENS, temperature=0.0, top_p=1.0, seed=0)
    hf = load_eval_model(MODEL, dtype="float32", device="cpu")
    ref = [generate_batch(hf.model, hf.tokenizer, [p], **kw)[0] for p in prompts]  # one at a time: no padding
    with load_vllm_model(MODEL, dtype="float32", prompts=prompts, max_new_tokens=TOKENS) as vm:
        assert vm.engine.config.dtype == "float32"
        ours = generate_batch(vm.model, vm.tokenizer, prompts, **kw)
    assert _children() == [], "the vLLM engine outlived its context"
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.text == b.text, f"prompt {i}: vllm {a.text!r} != transformers {b.text!r}"
        assert (a.length, a.truncated) == (b.length, b.truncated)


def test_vllm_error_names_the_fix_when_vllm_is_missing(monkeypatch):
    """Where vllm is installed, simulate its absence: check_backend must refuse before any work."""
    import importlib.util

    from rlattn.eval import check_backend

    check_backend("vllm")  # installed here: accepted
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ValueError, match="setup_vllm_cpu.sh"):
        check_backend("vllm")


@pytest.mark.parametrize("serve", ["merged", "adapter"])
def test_lora_adapter_greedy_text_equals_transformers(tmp_path, serve):
    """A PEFT adapter dir: the engine serves a merged copy (default) or the base model with the
    adapter as a LoRARequest; greedy text equals the transformers backend's (which merges it)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlattn.data import load_dataset
    from rlattn.eval import generate_batch, load_eval_model
    from rlattn.eval.generate import load_vllm_model

    base = load_eval_model(MODEL, dtype="float32", device="cpu").model
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():  # small enough to keep the text readable, large enough to change it
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = MODEL
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    prompts = [row["prompt"] for row in load_dataset("gsm8k_test", template="chat", limit=1)]
    kw = dict(max_new_tokens=TOKENS, temperature=0.0, top_p=1.0, seed=0)
    hf = load_eval_model(str(adapter), dtype="float32", device="cpu")
    ref = generate_batch(hf.model, hf.tokenizer, prompts, **kw)
    base_hf = load_eval_model(MODEL, dtype="float32", device="cpu")
    plain = generate_batch(base_hf.model, base_hf.tokenizer, prompts, **kw)
    assert ref[0].text != plain[0].text, "the adapter did not change greedy text: the test could not tell"
    with load_vllm_model(str(adapter), dtype="float32", prompts=prompts, max_new_tokens=TOKENS, lora=serve) as vm:
        assert vm.kind == "adapter"
        if serve == "adapter":
            assert vm.adapter == str(adapter) and vm.merged_dir is None
            assert vm.engine.config.enable_lora and vm.engine.config.max_lora_rank >= 4
        else:
            merged = vm.merged_dir
            assert vm.adapter is None and not vm.engine.config.enable_lora and vm.engine_model == merged
        ours = generate_batch(vm.model, vm.tokenizer, prompts, **kw)
    assert _children() == []
    if serve == "merged":
        assert not Path(merged).exists(), "the merged copy outlived its engine"
    assert ours[0].text == ref[0].text, f"vllm+LoRA {ours[0].text!r} != transformers merged {ref[0].text!r}"
