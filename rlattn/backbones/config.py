"""``BackboneArguments``: the optional backbone's own recipe keys (``backbone``, ``latent_*``).

A plug-in's arguments are a dataclass of their own that ``scripts/grpo.py`` parses next to the
core's (``rlattn.cli.parse_grpo_args(extra=...)``): the keys live in the same flat YAML and
unknown keys still fail. ``check_against(training_args)`` checks the combinations that involve the
core's keys (the rollout backend, ``num_iterations``, ``beta``), at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from rlattn.utils import field_help as _h

__all__ = ["BACKBONE_NAMES", "BackboneArguments"]

#: ``backbone`` values: ``none`` (the causal LM as is) and the plug-ins of rlattn.backbones.
BACKBONE_NAMES = ("none", "cocova_lite")


@dataclass
class BackboneArguments:
    """Which policy backbone wraps the LM, and its settings (docs/backbones.md)."""

    backbone: str = field(default="none", metadata=_h("Policy backbone: none (the causal LM as is) | cocova_lite (K latent thought vectors refined by a gated LQ-Former; optional image head)."))
    latent_num_latents: int = field(default=2, metadata=_h("cocova_lite: K, latent slots between prompt and completion."))
    latent_mode: str = field(default="cocova", metadata=_h("cocova_lite: cocova (K+1 LM passes, attention re-selection each step) | fast (one pass)."))
    latent_select_k: int = field(default=4, metadata=_h("cocova_lite: states the TokenSelector keeps per latent step."))
    latent_select_layers: list[int] | None = field(default=None, metadata=_h("cocova_lite: layers whose attention selects (default: the last third)."))
    latent_num_sinks: int = field(default=1, metadata=_h("cocova_lite: first real tokens treated as attention sinks and never selected."))
    latent_lqformer_blocks: int = field(default=1, metadata=_h("cocova_lite: gated cross-attention blocks in the LQ-Former."))
    latent_lqformer_heads: int = field(default=4, metadata=_h("cocova_lite: heads of the LQ-Former's cross-attention (must divide the LM hidden size)."))
    latent_freeze_gates: bool = field(default=False, metadata=_h("cocova_lite: keep the gates at 0 (placeholder-only / pause-token ablation)."))
    latent_gate_scale: float = field(default=1.0, metadata=_h("cocova_lite: gates are tanh(scale·α), still 0 at init; a larger scale lets the latent path open within a few steps."))
    latent_noise: float = field(default=0.0, metadata=_h("cocova_lite: σ of Gaussian noise on the latents of sampled rollouts; the sequence log-prob adds log N(z̃; z, σ²) (0: deterministic latents)."))
    latent_image_size: int = field(default=0, metadata=_h("cocova_lite: side of square input images (0: text only)."))
    latent_patch_size: int = field(default=8, metadata=_h("cocova_lite: patch side of the TinyPatchEncoder."))
    latent_vision_dim: int = field(default=64, metadata=_h("cocova_lite: width of the patch encoder."))
    latent_projector_hidden: int | None = field(default=None, metadata=_h("cocova_lite: hidden width of the MLP projector (None: linear)."))
    latent_format_warmup_steps: int = field(default=0, metadata=_h("cocova_lite: SFT steps on prompts paired with shuffled answers before GRPO (teaches the answer format, not the task; 0: off)."))
    latent_format_warmup_lr: float = field(default=1.0e-3, metadata=_h("cocova_lite: learning rate of the format warm-up."))
    latent_diagnostics: bool = field(default=True, metadata=_h("cocova_lite: log completion->latent/image attention, latent credit, patch grounding each generation batch (shares the statistics pass when one runs, else one extra forward)."))


    def __post_init__(self):
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone={self.backbone!r} is not one of {', '.join(map(repr, BACKBONE_NAMES))}")
        if self.backbone != "none":
            self.latent_config()

    def check_against(self, training_args) -> None:
        """The checks that need the training config (called by ``parse_grpo_args``)."""
        if self.backbone == "none":
            return
        if training_args.rollout_backend != "transformers":
            raise ValueError(f"backbone={self.backbone!r} generates with its own generate(); "
                             f"rollout_backend={training_args.rollout_backend!r} is not supported with it (use transformers)")
        if self.latent_noise > 0 and (training_args.num_iterations != 1 or training_args.beta != 0.0):
            raise ValueError(f"latent_noise={self.latent_noise} needs num_iterations: 1 and beta: 0.0 (got "
                             f"{training_args.num_iterations}, {training_args.beta}): only the loss pass re-reads the sampled latents")

    def latent_config(self):
        from .latent import LatentConfig

        return LatentConfig(
            num_latents=self.latent_num_latents, mode=self.latent_mode, select_k=self.latent_select_k,
            select_layers=self.latent_select_layers, num_sinks=self.latent_num_sinks,
            lqformer_blocks=self.latent_lqformer_blocks, lqformer_heads=self.latent_lqformer_heads,
            freeze_gates=self.latent_freeze_gates, gate_scale=self.latent_gate_scale, noise_std=self.latent_noise,
            image_size=self.latent_image_size, patch_size=self.latent_patch_size,
            vision_dim=self.latent_vision_dim, projector_hidden=self.latent_projector_hidden,
        )
