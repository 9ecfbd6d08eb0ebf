"""Does the signal move? WAAD, FAI and the selected sets of the starting model vs a trained policy,
on the same completions.

Under LoRA the attention that credit reads may stay nearly static while the policy learns; if so,
γ is (nearly) a function of the starting model. For a run, the completions it logged
(``rollouts.jsonl``: the prompt messages and completion ids of sampled rollouts) are scored by both
models with the project's engine and compared, per completion and then averaged:

- ``fai_corr``: Pearson correlation of FAI over the tokens where both are finite;
- ``anchor_jaccard`` / ``preplan_jaccard``: |A ∩ B| / |A ∪ B| of the TopQ sets (``select_tokens``
  with the run's credit settings; 1 when both are empty);
- ``waad_abs_diff``: mean |WAAD_start − WAAD_trained| over response tokens.
"""

from __future__ import annotations

import json
import math

__all__ = ["compare_signals", "signal_shift"]


def _jaccard(a, b) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def _pearson(x, y) -> float:
    if x.numel() < 3:
        return math.nan
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = (x.norm() * y.norm()).item()
    return math.nan if den == 0 else (x @ y).item() / den


def compare_signals(model_a, model_b, tokenizer, records, stats_config, credit_config, limit: int = 32) -> dict:
    """Mean over up to ``limit`` records of the module docstring's four numbers, and the count."""
    import torch

    from rlattn.credit import compute_attention_stats, select_tokens

    rows = []
    for rec in records[:limit]:
        prompt = json.loads(rec["prompt"]) if isinstance(rec["prompt"], str) and rec["prompt"].startswith("[") else rec["prompt"]
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) if isinstance(prompt, list) else prompt
        p_ids = tokenizer(text, add_special_tokens=not isinstance(prompt, list))["input_ids"]
        ids = torch.tensor([p_ids + list(rec["completion_ids"])])  # [1, N]
        am = torch.ones_like(ids)
        resp = torch.zeros_like(ids, dtype=torch.bool)
        resp[:, len(p_ids):] = True
        sa = compute_attention_stats(model_a, ids, am, resp, stats_config)
        sb = compute_attention_stats(model_b, ids, am, resp, stats_config)
        P = len(p_ids)
        mask = resp[:, P:]  # [1, T]
        wa, wb, fa, fb = sa.waad[:, P:], sb.waad[:, P:], sa.fai[:, P:], sb.fai[:, P:]
        seta, setb = select_tokens(wa, fa, mask, credit_config), select_tokens(wb, fb, mask, credit_config)
        finite = torch.isfinite(fa) & torch.isfinite(fb) & mask
        rows.append({"fai_corr": _pearson(fa[finite], fb[finite]),
                     "anchor_jaccard": _jaccard(seta["anchor"], setb["anchor"]),
                     "preplan_jaccard": _jaccard(seta["preplan"], setb["preplan"]),
                     "waad_abs_diff": (wa - wb).abs()[mask].mean().item()})
    out = {"completions": len(rows)}
    for key in ("fai_corr", "anchor_jaccard", "preplan_jaccard", "waad_abs_diff"):
        vals = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = sum(vals) / len(vals) if vals else math.nan
    return out


def signal_shift(config, runs, start_spec: str, limit: int = 32, extra: tuple = ()) -> dict:
    """For seed 0 (the first seed) of the baseline and of the first other strategy: the starting
    model vs the trained policy on that run's logged completions."""
    from rlattn.cli import parse_grpo_args
    from rlattn.models import load_model_and_tokenizer
    from rlattn.rollouts import load_records

    seed = config.compare_seeds[0]
    labels = [config.compare_baseline] + [v.label for v in config.variants() if v.label != config.compare_baseline][:1]
    start = load_model_and_tokenizer(start_spec, dtype="float32")
    out = {}
    for run in runs:
        if run.seed != seed or run.variant.label not in labels:
            continue
        path = run.output_dir / "rollouts.jsonl"
        if not path.is_file():
            continue
        training_args = parse_grpo_args(list(run.argv), extra=extra)[1]
        trained = load_model_and_tokenizer(str(run.output_dir), dtype="float32")
        out[f"{run.variant.label}/seed{seed}"] = compare_signals(
            start.model, trained.model, start.tokenizer, load_records(path), training_args.attention_stats_config(),
            training_args.credit_config(), limit=limit)
    return out
