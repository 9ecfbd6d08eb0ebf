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

from rlattn.utils import normalise_argv, write_atomic

logger = logging.getLogger("rlattn")

__all__ = ["apply_cpu_precision", "build_policy", "build_rewards", "load_policy", "load_train_dataset", "normalise_argv", "parse_grpo_args",
           "resolve_checkpoint", "write_run_summary"]


def parse_grpo_args(argv: Sequence[str] | None = None, extra: Sequence[type] = (), config_class: type | None = None):
    """Parse ``(ScriptArguments, AttnCreditConfig, ModelConfig, *extra)`` from YAML + command line.

    ``config_class`` replaces AttnCreditConfig (``rlattn.ppo.AttnCreditPPOConfig`` for PPO).

    ``extra`` are a plug-in's own dataclasses (the script passes them): their keys are parsed from the
    same flat YAML, unknown keys still fail. After parsing, an extra dataclass with a
    ``check_against(training_args)`` method is asked to check itself against the training config.
    """
    from trl import ModelConfig, TrlParser

    from rlattn.config import AttnCreditConfig, ScriptArguments

    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    parser = TrlParser((ScriptArguments, config_class or AttnCreditConfig, ModelConfig, *extra))
    parsed = parser.parse_args_and_config(argv)
    script_args, training_args, model_args = parsed[:3]
    if not model_args.model_name_or_path:
        from rlattn.models import DEFAULT_MODEL

        model_args.model_name_or_path = DEFAULT_MODEL
    apply_cpu_precision(training_args, model_args)
    for plug in parsed[3 : 3 + len(extra)]:
        if hasattr(plug, "check_against"):
            plug.check_against(training_args)
    return tuple(parsed[: 3 + len(extra)])


def apply_cpu_precision(training_args, model_args) -> str | None:
    """``cpu_precision: auto`` on a CPU without native kernels for the model's half dtype: load it in
    float32 (the config has already turned bf16/fp16 autocast off for the same reason). Logs what it
    changed and returns the half type given up (``training_args.cpu_precision_fallback``), or None.
    Why: such a CPU runs bf16 matmuls ~100x slower than float32 (``rlattn.utils.cpu_has_native``)."""
    from rlattn.utils import fast_cpu_dtype, runs_on_cpu, warn_cpu_fallback

    given_up = getattr(training_args, "cpu_precision_fallback", None)
    dtype = getattr(model_args, "dtype", None)
    if dtype and fast_cpu_dtype(dtype, getattr(training_args, "cpu_precision", "keep"),
                                runs_on_cpu(getattr(training_args, "use_cpu", False))) != dtype:
        model_args.dtype = "float32"
        given_up = given_up or dtype
        training_args.cpu_precision_fallback = given_up
    if given_up:
        warn_cpu_fallback(given_up, f"training (model dtype {dtype} -> {model_args.dtype}, bf16={training_args.bf16}, "
                                    f"fp16={training_args.fp16})")
    return given_up


def load_policy(model_args, training_args=None):
    """Resolve ``embedded:`` / ``tiny:`` names, load the causal LM and its tokenizer (left padding, pad token)."""
    from rlattn.models import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(model_args.model_name_or_path, dtype=model_args.dtype or "auto",
                                      attn_implementation=model_args.attn_implementation or "sdpa",
                                      revision=model_args.model_revision, eval_mode=False)
    return loaded.model, loaded.tokenizer


def build_policy(model_args, training_args):
    """``(model, processing_class, peft_config)`` for the trainer: the causal LM and its tokenizer;
    LoRA (when ``use_peft``) is left to TRL through ``peft_config``."""
    from trl import get_peft_config

    model, tokenizer = load_policy(model_args, training_args)
    return model, tokenizer, get_peft_config(model_args)


def load_train_dataset(script_args, seed: int = 0):
    """The training set with a conversational ``prompt`` and a ``solution`` column.

    Bundled, generated and local sets are filtered by ``dataset_max_problem_chars``, shuffled with
    ``dataset_shuffle_seed`` and cut to ``dataset_limit``, in that order. Sets that are drawn from a
    seed (``rlattn.data.is_seeded``: the toy tasks) take ``dataset_limit`` rows from
    ``dataset_shuffle_seed`` instead, in their generated order.
    """
    from rlattn.data import is_seeded, load_dataset

    if is_seeded(script_args.dataset_name):
        return load_dataset(script_args.dataset_name, limit=script_args.dataset_limit or 512,
                            seed=script_args.dataset_shuffle_seed or 0)
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
    """``resume_from_checkpoint``: a path, or true/'last' for the newest *complete* checkpoint in output_dir.

    Complete (``rlattn.runs.checkpoint_status``): its completion marker lists files that are all there
    with their sizes; for a checkpoint written before the marker existed, ``trainer_state.json`` and the
    optimizer state are present. A save cut short (``kill -9``, a crash, a full disk) is skipped with a
    warning that names it and what it lacks; a checkpoint given by path that is incomplete raises,
    naming what is missing and the fix.
    """
    from rlattn.runs import checkpoint_status, checkpoint_step, list_checkpoints, list_interrupt_saves

    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True", "last"):
        found = list_checkpoints(output_dir)
        if not found:
            saves = [p for p in list_interrupt_saves(output_dir) if checkpoint_status(p).complete]
            hint = f"resume from {saves[0]}, saved after a fault, with --resume_from_checkpoint {saves[0]}; " if saves else ""
            raise FileNotFoundError(f"resume_from_checkpoint={value!r} but {output_dir} has no checkpoint-* dir; {hint}"
                                    "start without resume_from_checkpoint, or give a checkpoint's path")
        skipped = []
        for path in found:
            status = checkpoint_status(path)
            if status.complete:
                if skipped:
                    logger.warning("rlattn: resuming from %s, the newest complete checkpoint; skipped %s", path,
                                   "; ".join(skipped))
                else:
                    logger.info("rlattn: resuming from %s (%s)", path, status.reason)
                newer = [p for p in list_interrupt_saves(output_dir) if checkpoint_status(p).complete
                         and checkpoint_step(p) > checkpoint_step(path)]
                if newer:
                    logger.warning("rlattn: %s, saved after a fault, is further along (step %d); to resume from it "
                                   "instead: --resume_from_checkpoint %s", newer[0], checkpoint_step(newer[0]), newer[0])
                return str(path)
            skipped.append(f"{path.name}: {status.reason}")
        raise FileNotFoundError(
            f"resume_from_checkpoint={value!r}: no complete checkpoint in {output_dir} ({'; '.join(skipped)}). "
            "Fix: give a complete checkpoint's path (e.g. an interrupted-* dir), or start without resume_from_checkpoint")
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a directory")
    status = checkpoint_status(value)
    if not status.complete:
        others = [p for p in list_checkpoints(output_dir) if os.path.abspath(p) != os.path.abspath(value)
                  and checkpoint_status(p).complete]
        fix = (f"resume from {others[0]}, the newest complete one (--resume_from_checkpoint last)" if others
               else "resume from another, complete checkpoint, or start without resume_from_checkpoint")
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} cannot be resumed from: {status.reason}. Fix: {fix}")
    return value


def write_run_summary(trainer, output_dir: str) -> Path:
    """metrics.jsonl (TRL's log history, one entry a line) next to the saved model; written whole or not at all."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.jsonl"
    write_atomic(path, "".join(json.dumps(entry) + "\n" for entry in trainer.state.log_history))
    return path
