"""The critic V(s_t): a value head on a second LoRA adapter over the policy's frozen base (default),
or on a separate model (``critic_model_name_or_path``).

Why a second adapter: with LoRA the policy's base weights are frozen anyway, so the critic can share
them: one base model in memory, the policy adapter (``default``) and the critic adapter
(``critic``) switched per pass. The switch keeps every parameter's ``requires_grad`` as it was
(PEFT's ``set_adapter`` would freeze the inactive adapter), so one backward of the summed loss
reaches both adapters, each through its own forward.

The value head is ``Linear(hidden, 1)``, zero-initialised (V ≡ 0 at the start), in float32. It is
registered as a submodule of the policy's transformers model (``rlattn_value_head``; a separate
critic model sits under ``rlattn_critic``), so the optimizer, DDP and ``.to()`` see it; the
trainer saves and loads its weights itself (``critic.safetensors``), never inside the policy's files.

V(s_t) for completion token t is read at sequence position P + t − 1, the position whose logits
emit token t (the last prompt token for t = 0): ``hidden[:, -T-1:-1]``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["CRITIC_ADAPTER", "Critic", "active_adapter"]

CRITIC_ADAPTER = "critic"
_HEAD = "rlattn_value_head"
_TRUNK = "rlattn_critic"


@contextlib.contextmanager
def active_adapter(peft_model, name: str):
    """Make ``name`` the active PEFT adapter inside the block; every ``requires_grad`` stays as it was."""
    previous = peft_model.active_adapter
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    peft_model.base_model.set_adapter(name)
    for p, flag in flags:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        peft_model.base_model.set_adapter(previous)
        for p, flag in flags:
            p.requires_grad_(flag)


def _decoder(model):
    """The transformer trunk of a causal LM (hidden states before the LM head)."""
    if hasattr(model, "get_decoder") and model.get_decoder() is not None:
        return model.get_decoder()
    return model.model


class Critic:
    """Computes values and owns the critic's parameters; built by the PPO trainer on its policy."""

    def __init__(self, policy, peft_config=None, critic_model=None):
        """``policy``: the unwrapped policy (a PeftModel for the LoRA critic). ``peft_config``: the
        critic adapter's LoRA config (LoRA critic). ``critic_model``: a causal LM to use as a
        separate critic (its LM head is dropped)."""
        self.policy = policy
        self.separate = critic_model is not None
        lm = policy.base_model.model if hasattr(policy, "peft_config") else policy  # the transformers model
        if self.separate:
            trunk = _decoder(critic_model)
            hidden = critic_model.config.get_text_config().hidden_size
            lm.add_module(_TRUNK, trunk)
        else:
            if not hasattr(policy, "peft_config"):
                raise ValueError("the LoRA critic needs a PEFT policy (use_peft: true); for full fine-tuning set "
                                 "critic_model_name_or_path to a model for a separate critic")
            policy.add_adapter(CRITIC_ADAPTER, peft_config)
            for name, p in policy.named_parameters():
                if f".{CRITIC_ADAPTER}." in name:
                    p.requires_grad_(True)
            hidden = lm.config.get_text_config().hidden_size
        head = nn.Linear(hidden, 1, dtype=torch.float32)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        lm.add_module(_HEAD, head.to(next(lm.parameters()).device))
        self.lm = lm

    @property
    def head(self) -> nn.Linear:
        return getattr(self.lm, _HEAD)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """V(s_t) for the last ``logits_to_keep`` tokens: float32 [B, T]."""
        if self.separate:
            hidden = getattr(self.lm, _TRUNK)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            with active_adapter(self.policy, CRITIC_ADAPTER):
                hidden = _decoder(self.lm)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, N, H]
        hidden = hidden[:, -logits_to_keep - 1 : -1]  # [B, T, H]: the positions that emit each completion token
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)  # [B, T]

    def named_parameters(self):
        """The critic's own parameters (adapter or separate trunk, and the head), by their names in the policy."""
        for name, p in self.policy.named_parameters():
            if _HEAD in name or _TRUNK in name or (not self.separate and f".{CRITIC_ADAPTER}." in name):
                yield name, p

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"critic checkpoint does not match this critic: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name].to(p.device, p.dtype))
                p.requires_grad_(True)  # PEFT's load_adapter(is_trainable=True) freezes every other adapter

    @contextlib.contextmanager
    def detached_from(self, model):
        """Inside the block the policy's transformers model has no critic submodules (to save it alone)."""
        removed = {k: self.lm._modules.pop(k) for k in (_HEAD, _TRUNK) if k in self.lm._modules}
        try:
            yield
        finally:
            for k, m in removed.items():
                self.lm.add_module(k, m)
