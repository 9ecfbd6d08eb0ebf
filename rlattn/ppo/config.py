"""``AttnCreditPPOConfig``: the GRPO config plus PPO's ``ppo_*`` / critic keys (flat YAML, TrlParser).

PPO reuses the GRPO trainer's generation, rewards, rollout backends, clipped policy loss
(``loss_type``, ``epsilon``), epochs (``num_iterations``) and minibatches
(``steps_per_generation``), so those keys mean what they mean for GRPO. What PPO adds: the
critic, GAE and the value loss. ``beta`` is the per-token KL penalty in the *rewards* against the
reference (with LoRA the base with adapters off; no second model), not a loss term.
``num_generations`` may be 1 (no group baseline is needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlattn.config import AttnCreditConfig
from rlattn.utils import field_help as _h

__all__ = ["AttnCreditPPOConfig"]


@dataclass
class AttnCreditPPOConfig(AttnCreditConfig):
    """AttnCreditConfig plus PPO's critic and GAE settings."""

    ppo_gamma: float = field(default=1.0, metadata=_h("GAE discount γ in [0, 1] (1: no discounting within a completion)."))
    ppo_lambda: float = field(default=0.95, metadata=_h("GAE λ in [0, 1] (1: Monte-Carlo returns; 0: one-step TD)."))
    ppo_whiten_advantages: bool = field(default=True, metadata=_h("Whiten the GAE advantages over the batch's valid tokens."))
    vf_coef: float = field(default=0.1, metadata=_h("Weight of the value loss in the total loss."))
    cliprange_value: float = field(default=0.2, metadata=_h("Clip of the value update around the rollout values (0: no clipping)."))
    critic_model_name_or_path: str | None = field(default=None, metadata=_h("A separate critic model (embedded:, tiny:, a path or a hub id); None: a value head on a second LoRA adapter over the policy's base."))

    def __post_init__(self):
        wanted = self.num_generations
        if wanted == 1:  # GRPOConfig insists on >= 2 for its group baseline, which PPO does not use
            self.num_generations = 2
        try:
            super().__post_init__()
        finally:
            self.num_generations = wanted
        if self.dynamic_sampling:
            raise ValueError("dynamic_sampling=True is GRPO's (it drops groups whose rewards are all equal); PPO's "
                             "advantages come from the critic, so every completion carries a signal. Set dynamic_sampling: false.")
        for key in ("ppo_gamma", "ppo_lambda"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{key}={v!r} must be a number in [0, 1]")
        if self.num_generations is None or self.num_generations < 1:
            raise ValueError(f"num_generations={self.num_generations!r} must be >= 1")
        if self.vf_coef < 0:
            raise ValueError(f"vf_coef={self.vf_coef!r} must be >= 0")
        if self.cliprange_value < 0:
            raise ValueError(f"cliprange_value={self.cliprange_value!r} must be >= 0 (0 turns value clipping off)")
        if self.critic_model_name_or_path is not None:
            from rlattn.models import locate_model

            try:
                locate_model(self.critic_model_name_or_path)
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(f"critic_model_name_or_path={self.critic_model_name_or_path!r}: {err}") from None
