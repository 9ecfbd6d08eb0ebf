"""rlattn.backbones: optional policy backbones (CoCoVa-lite latent reasoning, a multimodal head).

    from rlattn.backbones import LatentConfig, LatentPolicy, LatentProcessor, apply_lora
    policy = LatentPolicy.from_lm(lm, tokenizer, LatentConfig(num_latents=2, image_size=32))
    processor = LatentProcessor(tokenizer, num_latents=2, num_image_tokens=16, image_size=32)

Recipes select it with ``backbone: cocova_lite`` and ``latent_*`` keys; see docs/backbones.md.
Nothing here is imported by the default GRPO path.
"""

from .latent import (
    BACKBONE_TOKENS,
    TYPE_COMPLETION,
    TYPE_IMAGE,
    TYPE_LATENT,
    TYPE_NAMES,
    TYPE_PROMPT,
    TYPE_SPECIAL,
    LatentConfig,
    LatentPolicy,
    LatentPolicyConfig,
    LQFormerLite,
    TokenSelector,
    add_backbone_tokens,
    apply_lora,
    trainable_parameter_groups,
)
from .processor import LatentProcessor

__all__ = [
    "BACKBONE_TOKENS", "TYPE_COMPLETION", "TYPE_IMAGE", "TYPE_LATENT", "TYPE_NAMES", "TYPE_PROMPT", "TYPE_SPECIAL",
    "LQFormerLite", "LatentConfig", "LatentPolicy", "LatentPolicyConfig", "LatentProcessor", "TokenSelector",
    "add_backbone_tokens", "apply_lora", "trainable_parameter_groups",
]
