"""The transformers rollout backend and the common RolloutBatch, on a tiny random model (default run).

Checks against hand-computed references: greedy tokens equal an argmax loop over full forward
passes, sampling log-probs equal log_softmax(logits / T) at the sampled tokens (fp32, tolerance
1e-4), finish reasons, prompt-too-long handling, and that the TRL ``rollout_func`` built by the
factory drives a real AttnCreditGRPOTrainer step.
"""

import pytest
import torch
from datasets import Dataset

from rlattn.rollouts.base import PromptTooLongError, RolloutBackend, RolloutBatch, SamplingSpec
from rlattn.rollouts.factory import make_rollout_func, resolve_rollout
from rlattn.rollouts.hf_backend import HFRolloutBackend
from rlattn.testing import tiny_model

TOL = 1e-4  # fp32 log-prob tolerance (batched left-padded generate vs unpadded forward)
#: both decode paths: rlattn's loop that drops finished rows (default) and transformers' generate
DECODE = pytest.mark.parametrize("drop", [True, False], ids=["loop", "generate"])


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model("llama", num_layers=2, seed=0)
    model.eval()
    return model, tok


def prompts(tok):
    return [tok.encode("hi"), tok.encode("a longer prompt here")]


@torch.no_grad()
def reference_logps(model, prompt, completion, temperature=1.0):
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1: -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_backend_satisfies_protocol(tiny):
    assert isinstance(HFRolloutBackend(*tiny), RolloutBackend)


@DECODE
def test_greedy_matches_argmax_loop_and_logprobs(tiny, drop):
    model, tok = tiny
    backend = HFRolloutBackend(model, tok, eos_token_ids=[10_000], drop_finished=drop)  # unreachable id: no early stop
    batch = backend.generate(prompts(tok), SamplingSpec(max_tokens=6, temperature=0))
    for p, c, lp, reason in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs, batch.finish_reasons):
        ids = list(p)
        expected = []
        for _ in range(6):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            expected.append(nxt)
            ids.append(nxt)
        assert c == expected
        assert reason == "length"
        assert torch.allclose(torch.tensor(lp), reference_logps(model, p, c), atol=TOL)


@DECODE
def test_sampled_logprobs_are_temperature_scaled(tiny, drop):
    model, tok = tiny
    backend = HFRolloutBackend(model, tok, eos_token_ids=[10_000], drop_finished=drop)
    batch = backend.generate(prompts(tok), SamplingSpec(max_tokens=8, temperature=0.7, seed=3))
    for p, c, lp in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs):
        ref = reference_logps(model, p, c, temperature=0.7)
        assert torch.allclose(torch.tensor(lp), ref, atol=TOL)
        # and not the untempered distribution (so the test can tell the two apart)
        assert not torch.allclose(torch.tensor(lp), reference_logps(model, p, c), atol=TOL)


@DECODE
def test_stop_keeps_eos_and_cuts_after_it(tiny, drop):
    model, tok = tiny
    greedy = HFRolloutBackend(model, tok, eos_token_ids=[10_000], drop_finished=drop).generate(prompts(tok)[:1], SamplingSpec(max_tokens=6, temperature=0))
    third = greedy.completion_ids[0][2]
    first_hit = greedy.completion_ids[0].index(third)  # the token may already occur earlier
    batch = HFRolloutBackend(model, tok, eos_token_ids=[third], drop_finished=drop).generate(prompts(tok)[:1], SamplingSpec(max_tokens=6, temperature=0))
    assert batch.finish_reasons == ["stop"]
    assert batch.completion_ids[0] == greedy.completion_ids[0][: first_hit + 1]


def test_prompt_too_long_errors_or_counts_a_masked_skip(tiny):
    model, tok = tiny
    long_prompt = list(range(5, 45))
    with pytest.raises(PromptTooLongError, match="max_model_len=20"):
        HFRolloutBackend(model, tok, max_model_len=20).generate([long_prompt], SamplingSpec(max_tokens=4))
    backend = HFRolloutBackend(model, tok, max_model_len=20, on_prompt_too_long="skip", eos_token_ids=[10_000])
    batch = backend.generate([long_prompt, tok.encode("ok")], SamplingSpec(max_tokens=4, temperature=0))
    assert batch.finish_reasons[0] == "skipped" and batch.num_skipped == 1 and backend.num_skipped_total == 1
    assert batch.finish_reasons[1] == "length" and len(batch.completion_ids[1]) == 4
    trl = batch.to_trl()
    assert trl["env_mask"][0] == [0] and trl["env_mask"][1] == [1, 1, 1, 1]
    assert batch.padded(tok.pad_token_id)["completion_mask"][0].sum() == 0


def test_rollout_batch_validates_and_pads():
    with pytest.raises(ValueError, match="2 completion tokens but 1 log-probs"):
        RolloutBatch([[1]], [[2, 3]], [[0.0]], ["stop"])
    with pytest.raises(ValueError, match="finish reason 'abort'"):
        RolloutBatch([[1]], [[2]], [[0.0]], ["abort"])
    b = RolloutBatch([[1, 2], [3]], [[4], [5, 6]], [[-0.5], [-1.0, -2.0]], ["stop", "length"])
    t = b.padded(pad_token_id=0)
    assert t["prompt_ids"].tolist() == [[1, 2], [0, 3]] and t["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert t["completion_ids"].tolist() == [[4, 0], [5, 6]] and t["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert t["logprobs"].tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert set(b.to_trl()) == {"prompt_ids", "completion_ids", "logprobs", "rollout_finish_reason"}


def test_resolve_rollout_transformers_is_trl_default():
    class Args:
        rollout_backend = "transformers"

    assert resolve_rollout(Args()) is None
    Args.rollout_backend = "tgi"
    with pytest.raises(ValueError, match="rollout_backend='tgi' is not one of"):
        resolve_rollout(Args())


def digit_reward(completions, **kwargs):
    assert "rollout_finish_reason" in kwargs  # extra fields reach the reward functions
    return [sum(ch.isdigit() for ch in c[-1]["content"]) + 0.01 * len(c[-1]["content"]) for c in completions]


def test_rollout_func_drives_a_trainer_step(tmp_path):
    from rlattn.config import AttnCreditConfig
    from rlattn.trainer import AttnCreditGRPOTrainer

    model, tok = tiny_model("llama", num_layers=2, seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(4)])
    args = AttnCreditConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=12,
        max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
        gradient_checkpointing=False, seed=0, beta=0.0, use_cpu=True, credit_strategy="uniform",
    )
    fn = make_rollout_func("transformers")
    trainer = AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=data,
                                    processing_class=tok, rollout_func=fn)
    trainer.train()
    assert fn.version == 1  # synced at step 0 and step 1
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"rollouts/generate_s", "rollouts/tokens_per_s", "loss"} <= logged


def test_top_k_off_is_passed_as_off(tiny, monkeypatch):
    # top_k 0 means "disabled"; None would let the generation config's default top_k=50 apply
    model, tok = tiny
    seen = {}
    original = model.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    backend = HFRolloutBackend(model, tok, eos_token_ids=[10_000], drop_finished=False)
    backend.generate(prompts(tok), SamplingSpec(max_tokens=2, temperature=0.7, seed=0))
    assert seen["top_k"] == 0
    backend.generate(prompts(tok), SamplingSpec(max_tokens=2, temperature=0.7, top_k=5, seed=0))
    assert seen["top_k"] == 5


def test_merge_lora_generates_what_the_peft_policy_generates(tiny):
    from peft import LoraConfig, get_peft_model

    base, tok = tiny_model("llama", num_layers=2, seed=1)
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    plain = HFRolloutBackend(policy, tok, eos_token_ids=[10_000])
    merged = HFRolloutBackend(policy, tok, eos_token_ids=[10_000], merge_lora=True)
    spec = SamplingSpec(max_tokens=6, temperature=0)
    a, b = plain.generate(prompts(tok), spec), merged.generate(prompts(tok), spec)
    assert merged.generator is not policy and not hasattr(merged.generator, "peft_config")
    assert a.completion_ids == b.completion_ids
    for x, y in zip(a.logprobs, b.logprobs):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-4)
    # a new policy version: sync refreshes the copy (and the policy itself was never merged in place)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    merged.sync(policy, version=1)
    a, b = plain.generate(prompts(tok), spec), merged.generate(prompts(tok), spec)
    assert a.completion_ids == b.completion_ids
    assert any("lora_A" in n for n, _ in policy.named_parameters())


def grouped_prompts(tok):
    # three distinct prompts of different lengths (left padding differs per group), repeated as GRPO asks
    ps = [tok.encode("hi"), tok.encode("a longer prompt here"), tok.encode("two words")]
    return [p for p in ps for _ in range(3)]


@DECODE
@pytest.mark.parametrize("spec", [SamplingSpec(max_tokens=6, temperature=0), SamplingSpec(max_tokens=6, temperature=0.9, seed=3)],
                         ids=["greedy", "sampled"])
def test_shared_prefill_generates_what_the_row_prefill_generates(tiny, spec, drop):
    model, tok = tiny
    rows = grouped_prompts(tok)
    plain = HFRolloutBackend(model, tok, eos_token_ids=[10_000], share_prompts=False, drop_finished=drop)
    shared = HFRolloutBackend(model, tok, eos_token_ids=[10_000], share_prompts=True, drop_finished=drop)
    a, b = plain.generate(rows, spec), shared.generate(rows, spec)
    assert (plain.num_prefill_rows, shared.num_prefill_rows) == (9, 3)  # one prefill row per distinct prompt
    assert a.completion_ids == b.completion_ids  # the same draws (the RNG is consumed by the decode steps alone)
    for p, c, x, y in zip(b.prompt_ids, b.completion_ids, a.logprobs, b.logprobs):
        assert torch.allclose(torch.tensor(y), torch.tensor(x), atol=TOL)
        if spec.greedy:  # and against the unpadded reference, not only the other path
            assert torch.allclose(torch.tensor(y), reference_logps(model, p, c), atol=TOL)


@DECODE
def test_shared_prefill_leaves_only_the_last_prompt_column_to_decode(tiny, monkeypatch, drop):
    model, tok = tiny
    widths = []
    original = model.forward

    def spy(*args, **kwargs):
        widths.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    rows = grouped_prompts(tok)
    width = max(map(len, rows))
    HFRolloutBackend(model, tok, eos_token_ids=[10_000], share_prompts=True, drop_finished=drop).generate(
        rows, SamplingSpec(max_tokens=2, temperature=0))
    # the prefill: 3 distinct prompts x (width - 1) columns; then the last prompt column for all 9 rows, one decode step
    assert widths == [(3, width - 1), (9, 1), (9, 1)]


@DECODE
def test_shared_prefill_is_skipped_when_every_prompt_is_distinct(tiny, drop):
    model, tok = tiny
    backend = HFRolloutBackend(model, tok, eos_token_ids=[10_000], share_prompts=True, drop_finished=drop)
    backend.generate(prompts(tok), SamplingSpec(max_tokens=2, temperature=0))
    assert backend.num_prefill_rows == 2


def test_resolve_rollout_merge_lora_shares_prompts_unless_told_not_to():
    class Args:
        rollout_backend = "transformers"
        rollout_merge_lora = True

    assert resolve_rollout(Args()).engine_options == {"merge_lora": True, "share_prompts": True, "drop_finished": True,
                                                      "fast_decode": True}
    Args.rollout_share_prompts = False
    Args.rollout_drop_finished = False
    Args.rollout_fast_decode = False
    assert resolve_rollout(Args()).engine_options == {"merge_lora": True, "share_prompts": False, "drop_finished": False,
                                                      "fast_decode": False}


def test_decode_loop_drops_finished_rows_and_agrees_with_generate(tiny):
    model, tok = tiny
    rows = grouped_prompts(tok)[::3] + [tok.encode("one more prompt"), tok.encode("x")]  # 5 distinct prompts
    spec = SamplingSpec(max_tokens=8, temperature=0)
    free = HFRolloutBackend(model, tok, eos_token_ids=[10_000], drop_finished=False).generate(rows, spec)
    eos = free.completion_ids[0][2]  # row 0 stops by its third token; the other rows stop later or never
    loop = HFRolloutBackend(model, tok, eos_token_ids=[eos])
    a = HFRolloutBackend(model, tok, eos_token_ids=[eos], drop_finished=False).generate(rows, spec)
    b = loop.generate(rows, spec)
    lengths = [len(c) for c in b.completion_ids]
    assert min(lengths) <= 3 and len(set(lengths)) > 1  # the rows end at different steps
    assert b.completion_ids == a.completion_ids and b.finish_reasons == a.finish_reasons
    for x, y in zip(a.logprobs, b.logprobs):
        assert torch.allclose(torch.tensor(y), torch.tensor(x), atol=TOL)
    assert loop.num_decode_rows == sum(lengths) < len(rows) * max(lengths)  # a finished row costs no more steps


def test_decode_loop_samples_from_the_top_k_distribution(tiny):
    model, tok = tiny
    spec = SamplingSpec(max_tokens=6, temperature=0.7, top_k=5, seed=1)
    batch = HFRolloutBackend(model, tok, eos_token_ids=[10_000]).generate(prompts(tok), spec)
    for p, c, lp in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1: -1].float() / 0.7  # [T, V]
        top = logits.topk(5, dim=-1)
        assert all(tok_id in row for tok_id, row in zip(c, top.indices.tolist()))  # every draw is one of the top 5
        ref = torch.log_softmax(top.values, -1).gather(-1, (top.indices == torch.tensor(c)[:, None]).int().argmax(-1, keepdim=True))
        assert torch.allclose(torch.tensor(lp), ref.squeeze(-1), atol=TOL)  # renormalised over the top 5


# --- fast_decode: preallocated cache, in-place GQA decode attention, W @ h.T head, inverse-CDF draws ---

FAST = [("llama", 2), ("llama", 4), ("qwen3", 2)]  # GQA (2 KV heads for 4 query heads) and plain multi-head


@pytest.mark.parametrize("arch,kv", FAST, ids=[f"{a}-kv{k}" for a, k in FAST])
def test_fast_decode_equals_the_plain_loop(arch, kv, monkeypatch):
    from rlattn.rollouts import hf_backend

    model, tok = tiny_model(arch, num_layers=2, num_kv_heads=kv, seed=1, attn_implementation="sdpa")
    calls = {"gqa": 0, "prealloc": 0}
    gqa, prealloc = hf_backend._gqa_decode_attention, hf_backend._preallocate

    def counting_gqa(module, query, *args, **kwargs):
        calls["gqa"] += query.shape[2] == 1 and kv < 4  # a decode step of a GQA model: the in-place path
        return gqa(module, query, *args, **kwargs)

    def counting_prealloc(cache, capacity):
        calls["prealloc"] += 1
        prealloc(cache, capacity)
        assert all(type(layer).__name__ == "PreallocatedLayer" for layer in cache.layers)

    hf_backend._register_gqa_decode()
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, hf_backend._GQA_DECODE, counting_gqa)
    monkeypatch.setattr(hf_backend, "_preallocate", counting_prealloc)
    rows = [tok.encode("hi"), tok.encode("a longer prompt here"), tok.encode("hi"), tok.encode("mid size")]
    spec = SamplingSpec(max_tokens=12, temperature=0)
    plain = HFRolloutBackend(model, tok, eos_token_ids=[10_000], fast_decode=False).generate(rows, spec)
    greedy = HFRolloutBackend(model, tok, eos_token_ids=[10_000]).generate(rows, spec)
    assert calls["prealloc"] == 1 and (calls["gqa"] > 0) == (kv < 4)
    assert greedy.completion_ids == plain.completion_ids
    for p, c, a, b in zip(rows, greedy.completion_ids, plain.logprobs, greedy.logprobs):
        assert torch.allclose(torch.tensor(b), torch.tensor(a), atol=1e-5)
        assert torch.allclose(torch.tensor(b), reference_logps(model, p, c), atol=TOL)
    assert model.config._attn_implementation == "sdpa"  # restored after the loop
    assert "forward" not in vars(model.get_output_embeddings())  # the head's own forward is back
    # an early EOS drops rows from the preallocated cache; the survivors still agree
    eos = plain.completion_ids[0][3]
    a = HFRolloutBackend(model, tok, eos_token_ids=[eos], fast_decode=False).generate(rows, spec)
    b = HFRolloutBackend(model, tok, eos_token_ids=[eos]).generate(rows, spec)
    assert b.completion_ids == a.completion_ids and len({len(c) for c in b.completion_ids}) > 1
    # sampled: other draws, but log-probs are still those of the tempered distribution
    sampled = HFRolloutBackend(model, tok, eos_token_ids=[10_000]).generate(rows, SamplingSpec(max_tokens=8, temperature=0.7, seed=3))
    for p, c, lp in zip(rows, sampled.completion_ids, sampled.logprobs):
        assert torch.allclose(torch.tensor(lp), reference_logps(model, p, c, temperature=0.7), atol=TOL)


def test_inverse_cdf_sampler_draws_the_distribution(monkeypatch):
    from rlattn.rollouts.hf_backend import _BLOCK, _sample

    V = 2 * _BLOCK + 37  # three blocks, the last one padded
    probs = torch.zeros(V)
    mass = {3: 0.4, _BLOCK - 1: 0.1, _BLOCK: 0.2, 2 * _BLOCK + 36: 0.25, 2 * _BLOCK + 5: 0.05}  # block edges included
    for i, m in mass.items():
        probs[i] = m
    n = 40_000
    torch.manual_seed(0)
    draws = _sample(probs.expand(n, V).contiguous())  # [n]
    counts = torch.bincount(draws, minlength=V).double()
    assert set(torch.nonzero(counts).flatten().tolist()) == set(mass)  # never a token of probability 0
    for i, m in mass.items():
        sd = (n * m * (1 - m)) ** 0.5
        assert abs(counts[i] - n * m) < 5 * sd, (i, counts[i], n * m)
    # a residual rounded past its block's mass is pulled back onto the block's last live token
    spiky = torch.zeros(1, V)
    spiky[0, 10] = 1.0
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, 1 - 1e-12, dtype=torch.float64))
    assert int(_sample(spiky)) == 10  # u = 1 - 1e-12 rounds to 1.0 in float32, past the block's cumulative mass
