"""rlattn's vLLM CPU engine against the transformers reference, on the embedded SmolLM2-135M.

Marked ``vllm``: runs only where ``import vllm`` works (the separate venv from
scripts/setup_vllm_cpu.sh; CI's vLLM job). Everywhere else it is skipped with the reason.

The engine runs in float32 here so that the comparison is tight: log-probs of the same tokens
agree within LOGP_ATOL (absolute, per token) between the engine and the trainer's model. One engine
(with LoRA enabled) is shared by the module to pay the ~15-30 s start-up once.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlattn.rollouts.base import PromptTooLongError, RolloutBatch, RolloutError, SamplingSpec
from rlattn.rollouts.vllm_cpu import VLLMCPUBackend, VLLMCPUConfig, vllm_available

OK, WHY = vllm_available()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not OK, reason=f"vllm not importable here ({WHY})")]

LOGP_ATOL = 2e-3  # fp32 engine vs fp32 transformers, per token, absolute
GREEDY_TOKENS = 24
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path():
    from rlattn.models import resolve_model

    return resolve_model("embedded:smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tok(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def hf_model(model_path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def engine(model_path, tok):
    backend = VLLMCPUBackend(
        VLLMCPUConfig(model=model_path, dtype="float32", max_model_len=512, enable_lora=True, max_lora_rank=8,
                      lora_handover="adapter", start_timeout_s=300, request_timeout_s=300),
        eos_token_ids=[tok.eos_token_id],
    )
    backend.start()
    yield backend
    backend.close()


def chat_ids(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=True)["input_ids"] for t in texts]


QUESTIONS = ["What is 7 + 5? Put the final answer in \\boxed{}.", "Name three colors.", "Count from 1 to 5."]


@torch.no_grad()
def model_logps(model, prompt, completion):
    ids = torch.tensor([list(prompt) + list(completion)])
    logits = model(ids).logits[0, len(prompt) - 1: -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_engine_starts_and_reports(engine):
    assert engine.alive and engine.start_s > 0 and engine.max_model_len == 512


def _state(pid: int, settle_s: float = 5.0) -> str:
    """The process's scheduler state; waits up to ``settle_s`` for a just-sent SIGSTOP to take effect."""
    deadline = time.monotonic() + settle_s
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    while state != "T" and time.monotonic() < deadline:
        time.sleep(0.05)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state


def test_engine_is_stopped_between_requests(engine, tok):
    """pause_when_idle (default): the engine process is stopped while the trainer works and serves
    each request, also after a pause longer than a typical loss phase."""
    assert _state(engine._proc.pid) == "T"
    ids = chat_ids(tok, QUESTIONS[:1])
    first = engine.generate(ids, SamplingSpec(max_tokens=4, temperature=0.0))
    assert _state(engine._proc.pid) == "T"
    time.sleep(20)
    again = engine.generate(ids, SamplingSpec(max_tokens=4, temperature=0.0))
    assert again.completion_ids == first.completion_ids and _state(engine._proc.pid) == "T"


def test_greedy_matches_hf_greedy_and_logprobs(engine, hf_model, tok):
    from rlattn.rollouts.hf_backend import HFRolloutBackend

    prompts = chat_ids(tok, QUESTIONS)
    spec = SamplingSpec(max_tokens=GREEDY_TOKENS, temperature=0)
    ours = engine.generate(prompts, spec)
    ref = HFRolloutBackend(hf_model, tok).generate(prompts, spec)
    assert isinstance(ours, RolloutBatch)
    for i in range(len(prompts)):
        assert ours.completion_ids[i] == ref.completion_ids[i], f"prompt {i}: greedy tokens differ"
        assert ours.finish_reasons[i] == ref.finish_reasons[i]
        diff = (torch.tensor(ours.logprobs[i]) - model_logps(hf_model, prompts[i], ours.completion_ids[i])).abs().max()
        assert diff < LOGP_ATOL, f"prompt {i}: max |logp diff| {diff:.2e} >= {LOGP_ATOL}"


def test_prompt_too_long_is_a_clear_error(engine, tok):
    with pytest.raises(PromptTooLongError, match="max_model_len=512"):
        engine.generate([[tok.eos_token_id] * 600], SamplingSpec(max_tokens=4))


def test_sampled_groups_differ_and_stop_or_length(engine, tok):
    prompts = chat_ids(tok, QUESTIONS[:1]) * 4  # a group of 4 completions of one prompt
    batch = engine.generate(prompts, SamplingSpec(max_tokens=32, temperature=1.0))
    assert len({tuple(c) for c in batch.completion_ids}) > 1, "a group of samples came back identical"
    for c, r in zip(batch.completion_ids, batch.finish_reasons):
        assert r in ("stop", "length")
        assert (c[-1] == tok.eos_token_id) == (r == "stop")


@pytest.mark.parametrize("handover", ["adapter", "merged"])
def test_lora_handover_after_an_optimizer_step(engine, model_path, tok, handover):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    policy = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    prompts = chat_ids(tok, QUESTIONS)
    # one optimizer step on an NLL loss: moves the adapter away from its B=0 start
    text = tok(["The answer is \\boxed{12}."], return_tensors="pt")
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=5e-3)
    policy.train()
    policy(**text, labels=text["input_ids"]).loss.backward()
    opt.step()
    policy.eval()
    engine.config.lora_handover = handover
    try:
        engine.sync(policy, version=1)
    finally:
        engine.config.lora_handover = "adapter"
    assert (engine._lora is None) == (handover == "merged")
    batch = engine.generate(prompts, SamplingSpec(max_tokens=16, temperature=1.0))
    assert batch.policy_version == 1
    moved = 0.0
    for p, c, lp in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs):
        trainer_lp = model_logps(policy, p, c)
        diff = (torch.tensor(lp) - trainer_lp).abs().max()
        assert diff < LOGP_ATOL, f"engine vs trainer after a step: max |logp diff| {diff:.2e} >= {LOGP_ATOL}"
        with policy.disable_adapter():
            moved = max(moved, float((trainer_lp - model_logps(policy, p, c)).abs().max()))
    assert moved > 10 * LOGP_ATOL, f"the step barely moved the policy ({moved:.2e}): the test could not tell"


def test_full_finetune_weight_reload(engine, model_path, tok, hf_model):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "mlp.down_proj" in name:
                p.mul_(1.5)  # a visible, deterministic change in every layer
    prompts = chat_ids(tok, QUESTIONS[:2])
    engine._lora = None  # sample from the base weights now (full fine-tuning mode)
    engine.sync(policy, version=2)
    batch = engine.generate(prompts, SamplingSpec(max_tokens=12, temperature=1.0))
    for p, c, lp in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs):
        new = model_logps(policy, p, c)
        assert (torch.tensor(lp) - new).abs().max() < LOGP_ATOL
        assert (new - model_logps(hf_model, p, c)).abs().max() > 10 * LOGP_ATOL


def test_dead_engine_is_a_clear_error(model_path, tok):
    backend = VLLMCPUBackend(VLLMCPUConfig(model=model_path + "-missing", start_timeout_s=120), eos_token_ids=[tok.eos_token_id])
    with pytest.raises(RolloutError, match="start-up failed|died"):
        backend.start()
    assert not backend.alive
    with pytest.raises(RolloutError, match="not running"):
        backend.generate([[1, 2]], SamplingSpec(max_tokens=2))


@pytest.mark.slow
def test_grpo_script_two_steps_with_vllm(tmp_path):
    script = (ROOT / "scripts" / "grpo.py").read_text()
    if "resolve_rollout" not in script:
        pytest.skip("scripts/grpo.py does not wire rollout_backend=vllm yet (rlattn.rollouts.resolve_rollout)")
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    cmd = [sys.executable, str(ROOT / "scripts" / "grpo.py"), "--config", str(ROOT / "recipes" / "vllm_cpu.yaml"),
           "--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
           "--max_completion_length", "32", "--output_dir", str(tmp_path / "out"), "--logging_steps", "1",
           "--save_strategy", "no"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "rollouts/generate_s" in (proc.stdout + proc.stderr) or (tmp_path / "out").exists()
