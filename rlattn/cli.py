"""Wiring for the entry points in scripts/: argument parsing, policy, data and reward loading.

Scripts stay thin (parse → seed → data → model → rewards → trainer → train → save); the logic
they need lives here so that it is importable and tested.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

logger = logging.getLogger("rlattn")


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Allow ``grpo.py recipe.yaml [--key value ...]`` as well as ``--config recipe.yaml``."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        if "--config" in argv:
            raise ValueError(f"give the recipe either positionally ({argv[0]}) or with --config, not both")
        argv = ["--config", argv[0]] + argv[1:]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML path")
        if not Path(argv[i + 1]).is_file():
            raise FileNotFoundError(f"recipe not found: {argv[i + 1]}")
    return argv


def parse_grpo_args(argv: Sequence[str] | None = None):
    """Parse ``(ScriptArguments, AttnCreditConfig, ModelConfig)`` from YAML + command line."""
    from trl import ModelConfig, TrlParser

    from rlattn.config import AttnCreditConfig, ScriptArguments

    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    parser = TrlParser((ScriptArguments, AttnCreditConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        from rlattn.models import DEFAULT_MODEL

        model_args.model_name_or_path = DEFAULT_MODEL
    return script_args, training_args, model_args


def _dtype(name):
    import torch

    if name in (None, "auto"):
        return "auto"
    if not hasattr(torch, str(name)):
        raise ValueError(f"dtype={name!r} is not a torch dtype name (e.g. float32, bfloat16, auto)")
    return getattr(torch, name)


def load_policy(model_args, training_args=None):
    """Resolve ``embedded:`` names, load the causal LM and its tokenizer (left padding, pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlattn.models import resolve_model

    path = resolve_model(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation or "sdpa",
        dtype=_dtype(model_args.dtype),
    )
    return model, tokenizer


def build_policy(model_args, training_args):
    """``(model, processing_class, peft_config)`` for the trainer.

    ``backbone: none``: the causal LM and its tokenizer; LoRA (when ``use_peft``) is left to TRL
    through ``peft_config``. ``backbone: cocova_lite``: a :class:`~rlattn.backbones.LatentPolicy`
    around the LM and a :class:`~rlattn.backbones.LatentProcessor`; LoRA is applied here to the
    wrapped LM only (the LQ-Former, encoder and projector stay trainable), so ``peft_config`` is None.
    """
    from trl import get_peft_config

    model, tokenizer = load_policy(model_args, training_args)
    peft_config = get_peft_config(model_args)
    if getattr(training_args, "backbone", "none") == "none":
        return model, tokenizer, peft_config
    from rlattn.backbones import LatentPolicy, LatentProcessor, apply_lora

    latent = training_args.latent_config()
    policy = LatentPolicy.from_lm(model, tokenizer, latent)
    processor = LatentProcessor(tokenizer, num_latents=latent.num_latents, num_image_tokens=latent.num_patches,
                                image_size=latent.image_size)
    if peft_config is not None:
        apply_lora(policy, peft_config)
    return policy, processor, None


def maybe_format_warmup(model, processing_class, train_dataset, training_args) -> list[float]:
    """The backbone's opt-in format warm-up (shuffled answers; see rlattn.backbones.warmup)."""
    steps = int(getattr(training_args, "latent_format_warmup_steps", 0) or 0)
    if getattr(training_args, "backbone", "none") == "none" or steps <= 0:
        return []
    from rlattn.backbones.warmup import format_warmup

    return format_warmup(model, processing_class, train_dataset, steps=steps, lr=training_args.latent_format_warmup_lr,
                         batch_size=training_args.per_device_train_batch_size, seed=training_args.seed)


def load_train_dataset(script_args, seed: int = 0):
    """The training set with a conversational ``prompt`` and a ``solution`` column."""
    from rlattn.backbones.data import SYNTHETIC_DATASETS, load_synthetic
    from rlattn.data import load_dataset

    if script_args.dataset_name in SYNTHETIC_DATASETS:  # generated, deterministic in the seed
        n = script_args.dataset_limit or 512
        return load_synthetic(script_args.dataset_name, n=n, seed=script_args.dataset_shuffle_seed or 0)
    ds = load_dataset(script_args.dataset_name, split=script_args.dataset_split, template=script_args.prompt_template)
    if script_args.dataset_max_problem_chars is not None and "problem" in ds.column_names:
        limit = script_args.dataset_max_problem_chars
        ds = ds.filter(lambda r: len(r["problem"]) <= limit)
        if len(ds) == 0:
            raise ValueError(f"dataset_max_problem_chars={limit} leaves no rows of {script_args.dataset_name!r}")
    if script_args.dataset_shuffle_seed is not None:
        ds = ds.shuffle(seed=script_args.dataset_shuffle_seed)
    if script_args.dataset_limit is not None:
        if script_args.dataset_limit < 1:
            raise ValueError(f"dataset_limit={script_args.dataset_limit} must be >= 1")
        ds = ds.select(range(min(script_args.dataset_limit, len(ds))))
    return ds


def build_rewards(script_args, training_args):
    """Reward callables from names or dotted paths, with their script-level options."""
    from rlattn.rewards import get_reward_fn

    funcs = []
    for name in script_args.reward_funcs:
        kwargs = {}
        if name == "accuracy":
            kwargs = {"fallback_last_number": script_args.accuracy_fallback_last_number, "timeout": script_args.reward_timeout_s}
        elif name == "soft_overlong":
            kwargs = {"max_completion_len": training_args.max_completion_length, "soft_punish_cache": script_args.soft_overlong_cache}
        funcs.append(get_reward_fn(name, **kwargs))
    if not funcs:
        raise ValueError("reward_funcs is empty: give at least one reward name")
    return funcs


def resolve_checkpoint(value, output_dir: str):
    """``resume_from_checkpoint``: a path, or true/'last' for the newest checkpoint in output_dir."""
    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(f"resume_from_checkpoint={value!r} but {output_dir} has no checkpoint-* dir")
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a directory")
    return value


def write_run_summary(trainer, output_dir: str) -> Path:
    """metrics.jsonl (TRL's log history, one entry a line) next to the saved model."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.jsonl"
    with path.open("w") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    return path
