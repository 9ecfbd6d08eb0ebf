"""Loss passes that run each distinct prompt once: one prefix pass per prompt, its keys and values
shared by every completion of that prompt.

Why: GRPO scores ``num_generations`` completions of the same prompt, and TRL's log-prob passes run
the whole ``[prompt, completion]`` row for each. On the CPU recipes the prompt (system prompt plus
a worked example, ~150 tokens) is four times the completion (~35 tokens), so most of the loss
forward and backward recomputes the same prompt up to eight times (docs/benchmarks.md). With a
LoRA policy the prompt's keys and values depend on the adapter, so they cannot be cached across
steps, but within one pass they are the same for every row of a prompt.

How: rows whose prompt columns (ids and mask, left padding included) are equal form a group.
``prompt[:-1]`` of each group runs once with ``use_cache=True``; the cache is indexed out to the
rows (``index_select``: the backward sums the rows' gradients into the shared prefix) and the
rows run ``[last prompt token, completion]`` on top of it through TRL's fused LM head, with the
full attention mask. Positions continue from the cache, so every token sees the positions, keys
and mask of the unshared pass: log-probs and gradients equal it up to float round-off (tested,
``tests/rlattn/test_shared_prompt.py``).

TRL shuffles a generation batch's rows before cutting it into micro-batches, so a micro-batch of 8
holds ~4 prompts of ~2 rows each; :func:`regroup_by_prompt` (``shuffle_by_prompt``) deals the
micro-batches by prompt group instead, so one of ``num_generations`` rows holds one prompt and the
prefix runs once per micro-batch.

Used by :class:`rlattn.trainer.AttnCreditGRPOTrainer` when ``share_prompt_prefix`` is on, on
text-only batches and without gradient checkpointing (which drops the cache); anything else runs
TRL's own pass. A pass that captures attention statistics (the fused loss forward, the piggybacked
old-log-prob pass) shares too: the capture pauses during the prefix pass, and in the rows' pass
each selected layer's attention sees the completion's queries and the whole row's keys (the
prefix's from the cache), which is all the statistics read (their query rows are response rows;
credit/attention_stats.py). Only a capture with a user observer (which is promised whole-row
``q``) runs TRL's whole-row pass.
"""

from __future__ import annotations

import contextlib

import torch
from trl.trainer.utils import split_tensor_dict


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct prompts of a batch. ``prompt_ids``/``prompt_mask``: ``[B, P]``.

    Returns ``(first, row_to_group)``: ``first [U]`` the first row of each distinct prompt (in
    order of first appearance), ``row_to_group [B]`` the index into ``first`` of every row.
    """
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)  # [B, 2P]
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)  # groups in sorted order
    B, U = key.size(0), uniq.size(0)
    rows = torch.arange(B, device=key.device)
    first_sorted = torch.full((U,), B, dtype=torch.long, device=key.device).scatter_reduce(0, inverse, rows, "amin")
    order = torch.argsort(first_sorted)  # sorted-group index by first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(U, device=key.device)
    return first_sorted[order], rank[inverse]


def shared_prompt_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        compute_entropy: bool, autocast, groups: tuple[torch.Tensor, torch.Tensor] | None = None,
                        prefix_context=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, as TRL's
    ``_get_per_token_logps_and_entropies`` returns them for one chunk, with each distinct prompt run
    once. ``input_ids``/``attention_mask``: ``[B, P + C]`` with ``C = logits_to_keep``; ``model``
    carries TRL's fused LM head. ``autocast``: the accelerator's autocast context factory.
    ``groups``: :func:`prompt_groups` of the chunk's prompt columns, when the caller has them.
    ``prefix_context``: a context manager factory entered around the prefix pass only (an attention
    capture pauses there: the rows' pass sees the prefix's keys through the cache).
    """
    P = input_ids.size(1) - logits_to_keep
    first, row_to_group = groups or prompt_groups(input_ids[:, :P], attention_mask[:, :P])  # [U], [B]
    with autocast():
        with prefix_context():
            prefix = model(input_ids=input_ids[first, : P - 1], attention_mask=attention_mask[first, : P - 1],
                           use_cache=True, logits_to_keep=1)
        cache = prefix.past_key_values
        cache.batch_select_indices(row_to_group)  # [U, ...] -> [B, ...]; gradients sum back to each prompt
        suffix_ids = input_ids[:, P - 1:]  # [B, 1 + C]: the last prompt token predicts the first completion token
        labels = suffix_ids.masked_fill(attention_mask[:, P - 1:] == 0, -100)
        labels[:, 0] = -100
        out = model(input_ids=suffix_ids, attention_mask=attention_mask, past_key_values=cache,
                    labels=labels, fused_lm_head=True)
    logps = out.log_probs[:, -logits_to_keep:]  # [B, C]
    entropies = out.entropy[:, -logits_to_keep:] if compute_entropy else None
    return logps, entropies


def regroup_by_prompt(chunks: list[dict], generator: torch.Generator | None = None) -> list[dict]:
    """A generation batch's micro-batches re-dealt so that each holds as few distinct prompts as possible.

    ``chunks``: the micro-batches TRL made by shuffling the generation batch's rows and splitting
    them (``shuffle_sequence_dict`` then ``split_tensor_dict``). Their rows are merged, ordered by
    prompt group with the groups in random order (``generator``; rows keep their shuffled order
    inside a group) and split again into as many equal micro-batches. With
    ``per_device_train_batch_size == num_generations`` every micro-batch is then one prompt's
    group, and :func:`shared_prompt_logps` runs one prefix per micro-batch instead of ~one per row
    group it happened to receive. Per-row values (tensors with a batch dimension, lists) move
    together; scalars and ``None`` are kept. The optimizer steps see the same rows per generation
    batch, dealt by group instead of by row.
    """
    n = len(chunks)
    if n <= 1:
        return chunks
    merged = {}
    for key, v in chunks[0].items():
        parts = [c[key] for c in chunks]
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            merged[key] = torch.cat(parts)
        elif isinstance(v, list):
            merged[key] = [x for part in parts for x in part]
        else:
            merged[key] = v
    _, row_to_group = prompt_groups(merged["prompt_ids"], merged["prompt_mask"])  # [B]
    U, B = int(row_to_group.max()) + 1, row_to_group.numel()
    if B % n:
        raise ValueError(f"cannot re-deal {B} rows into {n} equal micro-batches")
    group_rank = torch.randperm(U, generator=generator).to(row_to_group.device)  # [U] random group order
    order = torch.argsort(group_rank[row_to_group] * B + torch.arange(B, device=row_to_group.device))  # [B]
    for key, v in merged.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            merged[key] = v[order]
        elif isinstance(v, list):
            merged[key] = [v[j] for j in order.tolist()]
    return split_tensor_dict(merged, n)  # TRL's own split, as it made ``chunks``
