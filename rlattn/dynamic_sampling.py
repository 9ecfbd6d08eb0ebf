"""DAPO-style dynamic sampling: groups whose rewards are all equal are replaced by fresh groups.

Why: a GRPO group whose completions all get the same reward has advantage 0 on every token, so it
adds nothing to the gradient but still costs its generation and its loss forward. On the embedded
model's arithmetic task a quarter to three quarters of the groups of a batch were like that
(``frac_reward_zero_std``, docs/results.md). DAPO (Yu et al., 2025, "dynamic sampling") keeps
drawing prompts until the batch is full of groups with reward variance. Here, after TRL has
generated and scored a batch, the zero-variance groups are swapped for groups of prompts drawn from
a separate seeded stream of the training set, for at most ``dynamic_sampling_max_rounds`` extra
generation rounds; groups still without variance after the last round stay in the batch.

Which groups have no variance is TRL's own test on the summed rewards of each group (the trainer
keeps the rewards of the batch it just scored). What is logged (per generation batch): ``dynamic_sampling/zero_std_before`` (share of groups of the
original draw without variance, the same quantity as TRL's ``frac_reward_zero_std``),
``.../zero_std_after``, ``.../dropped_groups`` (groups replaced), ``.../extra_groups`` (groups
generated to replace them: the extra generation cost) and ``.../rounds``. TRL's reward metrics
describe the original draw only, so they stay an unbiased measure of the policy on the data.

Limits: one process (the extra rounds would have to be agreed across ranks, since generation
gathers); text-only batches; advantages are TRL's, each computed inside its own batch (with
``scale_rewards: group``, the default, a group's advantages do not depend on the other groups).
"""

from __future__ import annotations

import torch

__all__ = ["zero_variance_groups", "merge_rows", "PromptStream", "LEFT_PADDED", "ROW_SCALARS"]

#: keys padded on the left (prompts); every other [B, T] tensor is right-padded (completions).
LEFT_PADDED = ("prompt_ids", "prompt_mask")
#: keys that are not per-row tensors
ROW_SCALARS = ("num_items_in_batch",)
#: batch keys dynamic sampling can merge; anything else in a batch (images, tool calls) refuses
MERGEABLE = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "num_items_in_batch",
             "old_per_token_logps", "sampling_per_token_logps", "ref_per_token_logps", "importance_sampling_ratio",
             "_piggy_waad", "_piggy_fai", "_piggy_entropies"}  # the trainer's captured statistics, completion-aligned


def zero_variance_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """[B] summed rewards (groups of ``num_generations`` consecutive rows) -> [B / G] bool: the
    groups whose rewards all agree, by TRL's own test (``isclose(std, 0)``, NaN rewards ignored).

    Rewards, not advantages: TRL's advantage of such a group is ``(r - mean) / (std + 1e-4)``, which
    float rounding of the mean leaves at ~1e-3 instead of 0 (e.g. eight rewards of 1.1).
    """
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)  # [B / G, G]
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1).clamp(min=1)
    mean = torch.where(valid, grouped, 0).sum(dim=1, keepdim=True) / count[:, None]
    var = torch.where(valid, (grouped - mean) ** 2, 0).sum(dim=1) / (count - 1).clamp(min=1)
    std = var.sqrt()
    return torch.isclose(std, torch.zeros_like(std))  # [B / G]


def _pad_to(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    if t.size(1) == width:
        return t
    pad = t.new_full((t.size(0), width - t.size(1)) + tuple(t.shape[2:]), value)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def merge_rows(base: dict, extra: dict, base_rows: torch.Tensor, extra_rows: torch.Tensor, pad_token_id: int) -> dict:
    """``base`` with its rows ``base_rows`` [R] replaced by ``extra``'s rows ``extra_rows`` [R].

    Both are TRL generation batches. Prompts are left-padded and completions right-padded to the
    wider of the two; ``num_items_in_batch`` is recounted from the merged completion mask (one
    process). Raises ValueError naming a key it cannot merge.
    """
    unknown = sorted((set(base) | set(extra)) - MERGEABLE)
    if unknown:
        raise ValueError(f"dynamic_sampling cannot merge batch keys {unknown} (text-only batches: {sorted(MERGEABLE)})")
    if set(base) != set(extra):
        raise ValueError(f"dynamic_sampling: the two batches have different keys: {sorted(set(base) ^ set(extra))}")
    out = {}
    for key, b in base.items():
        if key in ROW_SCALARS:
            continue
        e = extra[key]
        if b.dim() >= 2:
            width = max(b.size(1), e.size(1))
            value = pad_token_id if key.endswith("_ids") else (1.0 if key == "importance_sampling_ratio" else 0)
            left = key in LEFT_PADDED
            b, e = _pad_to(b, width, value, left), _pad_to(e, width, value, left)
        merged = b.clone()
        merged[base_rows] = e[extra_rows].to(merged.dtype)
        out[key] = merged
    if "prompt_ids" in out:  # drop columns that are padding in every row after the swap
        keep = out["prompt_mask"].bool().any(dim=0)  # [P]
        first = int(keep.nonzero()[0]) if keep.any() else 0
        out["prompt_ids"], out["prompt_mask"] = out["prompt_ids"][:, first:], out["prompt_mask"][:, first:]
    if "completion_mask" in out:
        width = int(out["completion_mask"].sum(dim=0).nonzero().max()) + 1 if out["completion_mask"].any() else 1
        for key in [k for k in out if k not in LEFT_PADDED and out[k].dim() >= 2]:
            out[key] = out[key][:, :width]
    if "num_items_in_batch" in base:
        out["num_items_in_batch"] = out["completion_mask"].sum().to(torch.as_tensor(base["num_items_in_batch"]).dtype)
    return out


class PromptStream:
    """Replacement prompts: ``take(n, step, round_)`` draws ``n`` distinct training rows from a
    generator seeded by ``(seed, step, round_)``, so the draw depends on nothing but the global
    step, and a resumed run draws what an uninterrupted one drew (no state to checkpoint)."""

    def __init__(self, dataset, seed: int):
        if len(dataset) == 0:
            raise ValueError("dynamic_sampling needs a non-empty training set")
        self.dataset = dataset
        self.seed = seed

    def take(self, n: int, step: int, round_: int) -> list[dict]:
        g = torch.Generator().manual_seed(1_000_003 * self.seed + 7_919 * step + round_)
        order = torch.randperm(len(self.dataset), generator=g)[: min(n, len(self.dataset))].tolist()
        return [self.dataset[i] for i in order]
