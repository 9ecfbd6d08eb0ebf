"""The backbone table: what ``scripts/grpo.py`` builds for each ``backbone`` value.

A :class:`Backbone` names the trainer class, how the policy is built from the loaded LM, what runs
before training (the format warm-up) and the trainer's extra keyword arguments. ``none`` is the
core as is; the core itself never looks here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import BACKBONE_NAMES, BackboneArguments

__all__ = ["Backbone", "get_backbone"]


@dataclass(frozen=True)
class Backbone:
    name: str
    trainer_class: Callable[[], type]  # lazily: the class to instantiate
    build_policy: Callable  # (model_args, training_args, backbone_args) -> (model, processing_class, peft_config)
    prepare: Callable  # (model, processing_class, train_dataset, training_args, backbone_args) -> None
    trainer_kwargs: Callable  # (backbone_args) -> dict

def _core_trainer():
    from rlattn.trainer import AttnCreditGRPOTrainer

    return AttnCreditGRPOTrainer


def _core_policy(model_args, training_args, backbone_args):
    from rlattn.cli import build_policy

    return build_policy(model_args, training_args)


def _latent_trainer():
    from .trainer import LatentCreditGRPOTrainer

    return LatentCreditGRPOTrainer


def _latent_policy(model_args, training_args, backbone_args):
    """A :class:`~rlattn.backbones.LatentPolicy` around the LM and a :class:`~rlattn.backbones.LatentProcessor`;
    LoRA goes on the wrapped LM only (the LQ-Former, encoder and projector stay trainable), so
    ``peft_config`` is None for the trainer."""
    from trl import get_peft_config

    from rlattn.cli import load_policy

    from .latent import LatentPolicy, apply_lora
    from .processor import LatentProcessor

    model, tokenizer = load_policy(model_args, training_args)
    peft_config = get_peft_config(model_args)
    latent = backbone_args.latent_config()
    policy = LatentPolicy.from_lm(model, tokenizer, latent)
    processor = LatentProcessor(tokenizer, num_latents=latent.num_latents, num_image_tokens=latent.num_patches,
                                image_size=latent.image_size)
    if peft_config is not None:
        apply_lora(policy, peft_config)
    return policy, processor, None


def _latent_prepare(model, processing_class, train_dataset, training_args, backbone_args):
    """The opt-in format warm-up (shuffled answers; rlattn.backbones.warmup)."""
    steps = int(backbone_args.latent_format_warmup_steps or 0)
    if steps <= 0:
        return
    from .warmup import format_warmup

    format_warmup(model, processing_class, train_dataset, steps=steps, lr=backbone_args.latent_format_warmup_lr,
                  batch_size=training_args.per_device_train_batch_size, seed=training_args.seed)


_BACKBONES = {
    "none": Backbone("none", _core_trainer, _core_policy, lambda *a: None, lambda b: {}),
    "cocova_lite": Backbone("cocova_lite", _latent_trainer, _latent_policy, _latent_prepare,
                            lambda b: {"backbone_args": b}),
}
assert tuple(_BACKBONES) == BACKBONE_NAMES


def get_backbone(args_or_name: BackboneArguments | str) -> Backbone:
    name = args_or_name if isinstance(args_or_name, str) else args_or_name.backbone
    if name not in _BACKBONES:
        raise ValueError(f"backbone={name!r} is not one of {', '.join(map(repr, BACKBONE_NAMES))}")
    return _BACKBONES[name]
