"""merged_state_dict: the LoRA hand-over the CPU vLLM engine uses by default (no vLLM needed).

The merged checkpoint, loaded into a fresh copy of the base model, must give the PEFT policy's
logits (fp32, atol 1e-5), and building it must leave the policy untouched (bit-identical).
"""

import pytest
import torch

from rlattn.rollouts.vllm_cpu import VLLMCPUConfig, merged_state_dict
from rlattn.testing import tiny_model


def _policy(arch, tie, modules_to_save=None):
    from peft import LoraConfig, get_peft_model

    base, tok = tiny_model(arch, num_layers=2, tie_word_embeddings=tie)
    fresh, _ = tiny_model(arch, num_layers=2, tie_word_embeddings=tie)  # same seed: the same base weights
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                     init_lora_weights=False, modules_to_save=modules_to_save)  # B != 0: a real delta
    return get_peft_model(base, cfg).eval(), fresh.eval()


@pytest.mark.parametrize("arch,tie", [("llama", True), ("qwen2", False), ("qwen3", False)])
def test_merged_weights_reproduce_the_policy(arch, tie):
    policy, fresh = _policy(arch, tie)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    sd = merged_state_dict(policy)
    assert not any("lora_" in k or "base_layer" in k for k in sd)
    assert set(sd) <= set(fresh.state_dict())
    missing = set(fresh.state_dict()) - set(sd)
    assert missing == ({"lm_head.weight"} if tie else set()), missing  # tied: written once
    fresh.load_state_dict(sd, strict=False)
    ids = torch.randint(3, 200, (2, 12))
    with torch.no_grad():
        want, got = policy(ids).logits, fresh(ids).logits
        base_only = None
        with policy.disable_adapter():
            base_only = policy(ids).logits
    assert (got - want).abs().max() < 1e-5
    assert (base_only - want).abs().max() > 1e-3, "the adapter made no difference: the test could not tell"
    for k, v in policy.state_dict().items():  # the trainer's model is not merged in place
        assert torch.equal(v, before[k]), k


def test_modules_to_save_are_folded_in():
    policy, fresh = _policy("qwen2", False, modules_to_save=["lm_head"])
    with torch.no_grad():
        policy.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2.0)
    sd = merged_state_dict(policy)
    assert torch.equal(sd["lm_head.weight"], policy.base_model.model.lm_head.modules_to_save["default"].weight)
    fresh.load_state_dict(sd, strict=True)


def test_lora_handover_is_validated():
    with pytest.raises(ValueError, match="lora_handover='merge'.*'merged', 'adapter'"):
        VLLMCPUConfig(model="m", lora_handover="merge")
