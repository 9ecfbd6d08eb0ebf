"""rlattn.ppo: PPO with a learned critic on the GRPO trainer's machinery, with attention credit on
the GAE advantages (docs/ppo.md).

    from rlattn.ppo import AttnCreditPPOConfig, AttnCreditPPOTrainer
    accelerate launch scripts/ppo.py recipes/ppo_anchor_credit.yaml
"""

from .config import AttnCreditPPOConfig
from .gae import gae, masked_whiten, token_rewards
from .trainer import AttnCreditPPOTrainer

__all__ = ["AttnCreditPPOConfig", "AttnCreditPPOTrainer", "gae", "masked_whiten", "token_rewards"]
