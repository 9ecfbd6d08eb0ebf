"""rlattn.backbones: optional policy backbones (CoCoVa-lite latent reasoning, a multimodal head).

    from rlattn.backbones import LatentConfig, LatentPolicy, LatentProcessor, apply_lora
    policy = LatentPolicy.from_lm(lm, tokenizer, LatentConfig(num_latents=2, image_size=32))
    processor = LatentProcessor(tokenizer, num_latents=2, num_image_tokens=16, image_size=32)

A plug-in on the core: its recipe keys (``backbone``, ``latent_*``) are :class:`BackboneArguments`,
its trainer :class:`~rlattn.backbones.trainer.LatentCreditGRPOTrainer` subclasses the core trainer
at its documented extension points, and ``scripts/grpo.py`` picks both from :func:`get_backbone`.
The core (config, trainer, cli, credit) never imports this package; see docs/backbones.md and
docs/architecture.md. The model classes load lazily, so importing the table costs nothing.
"""

from .config import BACKBONE_NAMES, BackboneArguments
from .plugin import Backbone, get_backbone

_LATENT = ("BACKBONE_TOKENS", "TYPE_COMPLETION", "TYPE_IMAGE", "TYPE_LATENT", "TYPE_NAMES", "TYPE_PROMPT", "TYPE_SPECIAL",
           "LQFormerLite", "LatentConfig", "LatentPolicy", "LatentPolicyConfig", "TokenSelector", "add_backbone_tokens",
           "apply_lora", "trainable_parameter_groups")

__all__ = ["BACKBONE_NAMES", "Backbone", "BackboneArguments", "LatentProcessor", "get_backbone", *_LATENT]


def __getattr__(name):
    if name in _LATENT:
        from . import latent

        return getattr(latent, name)
    if name == "LatentProcessor":
        from .processor import LatentProcessor

        return LatentProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
