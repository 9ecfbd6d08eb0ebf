"""Difficulty filtering: keep the problems a model solves sometimes, not always or never.

Why: a GRPO group whose k completions all score the same has advantage 0 and teaches nothing
(``frac_reward_zero_std`` in TRL's logs). On GSM8K the embedded 135M model solves ~3-6 %, so
almost every group is all-zero. Peers filter offline like this (sample k completions per problem
with the policy, keep problems whose pass rate lies in a band); it works for any model and data.

:func:`filter_difficulty` samples ``k`` completions per problem with the evaluator's own sampler
(``rlattn.eval.generate.generate_batch``: the prompt template, left padding, EOS rules) and grades
them with the training reward (``rlattn.rewards.accuracy``: strict boxed answers, or lenient with
the last-number fallback), then writes the problems whose pass rate is in ``[band_lo, band_hi]``
as JSONL (``problem``, ``answer``, ``id``, the source's other fields, ``pass_rate``,
``num_samples``), loadable by ``rlattn.data.load_dataset(path)``, and a summary with the pass-rate
histogram of all problems.

``backend: vllm`` samples on rlattn's vLLM engine (the evaluator's ``load_vllm_model``; ~3x the
transformers backend's tokens/s on 2 CPU cores, docs/benchmarks.md) where vLLM is installed.
``dataset_skip`` extends an earlier run: it filters the problems after the first N (in the same
shuffled order), so two runs' outputs never overlap and can be concatenated.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from rlattn.utils import check_cpu_precision, fast_cpu_dtype, runs_on_cpu
from rlattn.utils import field_help as _h

logger = logging.getLogger("rlattn")

__all__ = ["DifficultyConfig", "filter_difficulty", "parse_difficulty_args", "pass_rate_histogram"]


@dataclass
class DifficultyConfig:
    """Options of ``scripts/filter_difficulty.py`` (flat YAML or ``--key value``)."""

    dataset_name: str = field(default="gsm8k_train", metadata=_h("A name rlattn.data.load_dataset knows, or a local .jsonl/.json/.parquet file."))
    dataset_split: str | None = field(default=None, metadata=_h("Split for families with several (e.g. 'train')."))
    dataset_limit: int | None = field(default=None, metadata=_h("Keep the first N problems (after shuffling with dataset_seed)."))
    dataset_seed: int | None = field(default=0, metadata=_h("Shuffle seed before the limit (None: file order)."))
    dataset_skip: int = field(default=0, metadata=_h("Skip the first N problems (after shuffling): extends an earlier run that used dataset_limit N without overlapping it."))
    prompt_template: str = field(default="chat", metadata=_h("Prompt template (rlattn.data.PROMPT_TEMPLATES): chat, chat_example, plain, r1."))
    model: str = field(default="embedded:smollm2-135m-instruct", metadata=_h("Model spec: embedded:<name>, tiny:<arch>, a checkpoint or adapter dir, a hub id."))
    dtype: str = field(default="bfloat16", metadata=_h("Model dtype for sampling."))
    cpu_precision: str = field(default="auto", metadata=_h("On CPU: auto samples a bfloat16/float16 dtype in float32 when this CPU has no native kernels for it (~100x slower there; rlattn.utils.cpu_has_native) | keep: as configured."))
    k: int = field(default=8, metadata=_h("Completions sampled per problem (use your GRPO num_generations)."))
    temperature: float = field(default=0.7, metadata=_h("Sampling temperature (use your training temperature)."))
    top_p: float = field(default=1.0, metadata=_h("Nucleus sampling."))
    max_new_tokens: int = field(default=128, metadata=_h("Completion budget (use your max_completion_length)."))
    backend: str = field(default="transformers", metadata=_h("Sampler: transformers (CPU or GPU) or vllm (rlattn's vLLM engine, where vLLM is installed)."))
    batch_size: int = field(default=64, metadata=_h("Completions generated per generate() call."))
    lenient: bool = field(default=False, metadata=_h("Grade with the last-number fallback when there is no boxed answer."))
    band: list[float] = field(default_factory=lambda: [0.1, 0.9], metadata=_h("[lo, hi]: keep problems with lo <= pass rate <= hi."))
    seed: int = field(default=0, metadata=_h("Sampling seed (each batch is seeded from it)."))
    output: str = field(default="outputs/filtered.jsonl", metadata=_h("Where the kept problems go; <output>.summary.json gets the histogram."))

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k={self.k!r} must be a positive integer")
        if len(self.band) != 2 or not 0.0 <= float(self.band[0]) <= float(self.band[1]) <= 1.0:
            raise ValueError(f"band={self.band!r} must be [lo, hi] with 0 <= lo <= hi <= 1")
        if isinstance(self.dataset_skip, bool) or not isinstance(self.dataset_skip, int) or self.dataset_skip < 0:
            raise ValueError(f"dataset_skip={self.dataset_skip!r} must be an integer >= 0")
        if self.backend not in ("transformers", "vllm"):
            raise ValueError(f"backend={self.backend!r} is not one of transformers, vllm")
        check_cpu_precision(self.cpu_precision)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"batch_size={self.batch_size!r} and max_new_tokens={self.max_new_tokens!r} must be >= 1")


def parse_difficulty_args(argv: Sequence[str] | None = None) -> DifficultyConfig:
    """``DifficultyConfig`` from an optional YAML (positional or ``--config``) and ``--key value`` flags."""
    import sys

    from trl import TrlParser

    from rlattn.utils import normalise_argv

    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser((DifficultyConfig,)).parse_args_and_config(argv)
    return config


def pass_rate_histogram(rates: Sequence[float], k: int) -> dict[str, int]:
    """How many problems solved c of k times, for c = 0..k (keys "0/8" ... "8/8")."""
    counts = Counter(round(r * k) for r in rates)
    return {f"{c}/{k}": counts.get(c, 0) for c in range(k + 1)}


def filter_difficulty(config: DifficultyConfig) -> dict:
    """Sample, grade, filter and write; returns the summary (also written next to the output)."""
    from rlattn.data import load_dataset
    from rlattn.eval.generate import check_backend, load_vllm_model
    from rlattn.models import load_model_and_tokenizer
    from rlattn.rewards.accuracy import AccuracyReward

    check_backend(config.backend)
    limit = None if config.dataset_limit is None else config.dataset_skip + config.dataset_limit
    ds = load_dataset(config.dataset_name, split=config.dataset_split, template=config.prompt_template,
                      limit=limit, seed=config.dataset_seed)
    rows = [ds[i] for i in range(config.dataset_skip, len(ds))]
    dtype = fast_cpu_dtype(config.dtype, config.cpu_precision, runs_on_cpu(), doing="sampling")
    if config.backend == "vllm":
        engine = load_vllm_model(config.model, dtype=dtype, prompts=[r["prompt"] for r in rows],
                                 max_new_tokens=config.max_new_tokens, seed=config.seed)
        model, tokenizer = engine, engine.tokenizer
    else:
        engine = None
        loaded = load_model_and_tokenizer(config.model, dtype=dtype)
        model, tokenizer = loaded.model, loaded.tokenizer
    try:
        rates = _sample_and_grade(config, rows, model, tokenizer, AccuracyReward(fallback_last_number=config.lenient))
    finally:
        if engine is not None:
            engine.close()
    lo, hi = map(float, config.band)
    kept = [(r, p) for r, p in zip(rows, rates) if not math.isnan(p) and lo <= p <= hi]
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row, rate in kept:
            record = {k: v for k, v in row.items() if k not in ("prompt", "solution")}
            record.update(answer=row["solution"], pass_rate=rate, num_samples=config.k)
            f.write(json.dumps(record, default=str) + "\n")
    finite = [p for p in rates if not math.isnan(p)]
    summary = {
        "config": asdict(config),
        "problems": len(rows),
        "kept": len(kept),
        "ungraded": len(rates) - len(finite),
        "mean_pass_rate": sum(finite) / len(finite) if finite else math.nan,
        "histogram": pass_rate_histogram(finite, config.k),
        "output": str(out),
    }
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _sample_and_grade(config, rows, model, tokenizer, grade) -> list[float]:
    """Pass rate of each row over ``config.k`` samples (NaN where no sample could be graded).

    Batches are seeded by their absolute position (``dataset_skip`` + offset), so a run with
    ``dataset_skip`` draws what the same rows would have drawn in a longer run (when the skip is a
    multiple of the problems per call)."""
    import torch

    from rlattn.eval.generate import generate_batch, seed_from

    per_call = max(1, config.batch_size // config.k)  # problems per generate() call
    rates: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), per_call):
            chunk = rows[start : start + per_call]
            prompts = [r["prompt"] for r in chunk for _ in range(config.k)]
            gens = generate_batch(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                                  temperature=config.temperature, top_p=config.top_p,
                                  seed=seed_from(config.seed, config.model, config.dataset_name, config.dataset_skip + start))
            scores = grade([g.text for g in gens], solution=[r["solution"] for r in chunk for _ in range(config.k)])
            for j in range(len(chunk)):
                got = [s for s in scores[j * config.k : (j + 1) * config.k] if s is not None]
                rates.append(sum(got) / len(got) if got else math.nan)
            logger.info("rlattn: graded %d/%d problems", min(start + per_call, len(rows)), len(rows))
    return rates
