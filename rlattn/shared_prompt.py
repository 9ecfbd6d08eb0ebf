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

With ``pack_completions`` (:func:`pack_rows`) the rows' pass runs the rows' tokens packed into one
sequence without the padding TRL adds after short completions, on top of the prompts' prefixes laid
side by side, with a block mask: each token sees its own prompt and its own earlier tokens, at the
position it has in the padded pass (sdpa and eager attention).

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
from typing import NamedTuple

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
                        prefix_context=contextlib.nullcontext, pack: bool = False,
                        rows_context=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, as TRL's
    ``_get_per_token_logps_and_entropies`` returns them for one chunk, with each distinct prompt run
    once. ``input_ids``/``attention_mask``: ``[B, P + C]`` with ``C = logits_to_keep``; ``model``
    carries TRL's fused LM head. ``autocast``: the accelerator's autocast context factory.
    ``groups``: :func:`prompt_groups` of the chunk's prompt columns, when the caller has them.
    ``prefix_context``: a context manager factory entered around the prefix pass only (an attention
    capture pauses there: the rows' pass sees the prefix's keys through the cache).
    ``pack``: run the rows' tokens packed into one sequence without their padding (see
    :func:`pack_rows`; where it does not pay, the rows run padded). ``rows_context``: a context
    manager factory entered around a packed rows' pass with the function that maps the packed
    ``(q [1, H, N, D], k [1, KV, U(P-1) + N, D])`` an attention capture sees to the padded rows'
    ``(q [B, H, 1 + C, D], k [B, KV, P + C, D])`` of the unpacked pass.
    """
    P = input_ids.size(1) - logits_to_keep
    first, row_to_group = groups or prompt_groups(input_ids[:, :P], attention_mask[:, :P])  # [U], [B]
    with autocast():
        with prefix_context():
            prefix = model(input_ids=input_ids[first, : P - 1], attention_mask=attention_mask[first, : P - 1],
                           use_cache=True, logits_to_keep=1)
        cache = prefix.past_key_values
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        packed = pack_rows(attention_mask, P, first, row_to_group) if pack and impl in ("sdpa", "eager") else None
        if packed is not None:
            return _packed_rows_pass(model, input_ids, cache, packed, compute_entropy, rows_context)
        cache.batch_select_indices(row_to_group)  # [U, ...] -> [B, ...]; gradients sum back to each prompt
        suffix_ids = input_ids[:, P - 1:]  # [B, 1 + C]: the last prompt token predicts the first completion token
        labels = suffix_ids.masked_fill(attention_mask[:, P - 1:] == 0, -100)
        labels[:, 0] = -100
        out = model(input_ids=suffix_ids, attention_mask=attention_mask, past_key_values=cache,
                    labels=labels, fused_lm_head=True)
    logps = out.log_probs[:, -logits_to_keep:]  # [B, C]
    entropies = out.entropy[:, -logits_to_keep:] if compute_entropy else None
    return logps, entropies


#: :func:`pack_rows` packs where it saves at least this share of the rows' columns ...
PACK_MIN_SAVING = 0.1
#: ... and its dense attention is at most this many times the padded rows'
PACK_MAX_ATTENTION = 2.0


class PackedRows(NamedTuple):
    """Index maps of a chunk's rows packed on top of their prompts' cached prefixes (:func:`pack_rows`)."""

    token: tuple[torch.Tensor, torch.Tensor]  # ([N] row, [N] column) of each packed token in the [B, P + C] input
    positions: torch.Tensor  # [N] position ids: P - 1 + offset in the row's segment, as in the unpacked pass
    mask: torch.Tensor  # [1, 1, N, U(P-1) + N] bool: the own prompt's (unpadded) prefix, then the own segment causally
    labels: torch.Tensor  # [N] bool: a completion token, scored (not each segment's first, the last prompt token)
    scored: torch.Tensor  # [n] packed log-prob slots of the completion tokens, rows in order
    completion: torch.Tensor  # [B, C] bool: where those tokens go back
    q_index: torch.Tensor  # [B, 1 + C] packed query position of each unpacked suffix column (N: padding)
    k_index: torch.Tensor  # [B, P + C] packed key position of each unpacked column (U(P-1) + N: padding)


def pack_rows(attention_mask: torch.Tensor, P: int, first: torch.Tensor, row_to_group: torch.Tensor) -> PackedRows | None:
    """Pack the rows' ``[last prompt token, completion]`` segments of a ``[B, P + C]`` chunk into one
    sequence of ``N = sum(1 + completion length)`` tokens, on top of the ``U`` prompt prefixes laid
    side by side (``U(P-1)`` cached columns).

    Why: TRL right-pads every completion to the longest of the generation batch, and each padded
    column costs the full layer stack (in the main recipe 1,019 padded columns for 635 tokens per
    step). Packed, each token attends to its own prompt's prefix (left padding masked) and to the
    earlier tokens of its own segment, at the position it has in the unpadded pass, so log-probs,
    entropies and gradients equal it up to round-off (tests/rlattn/test_shared_prompt.py).

    Returns None where packing does not pay or does not apply: completions not right-padded, fewer
    than 10 % padded columns, or a dense ``N x (U(P-1) + N)`` attention more than twice the padded
    rows' ``B(1 + C) x (P + C)`` (packing many long rows into one sequence makes attention quadratic in B).
    """
    B, W = attention_mask.shape
    C, dev = W - P, attention_mask.device
    completion = attention_mask[:, P:].bool()  # [B, C]
    lengths = completion.sum(1)  # [B]
    if not torch.equal(completion, torch.arange(C, device=dev)[None] < lengths[:, None]):
        return None  # not right-padded: not TRL's layout
    seg = 1 + lengths  # [B]
    N, U = int(seg.sum()), first.numel()
    kv = U * (P - 1) + N
    if N > (1 - PACK_MIN_SAVING) * B * (1 + C) or N * kv > PACK_MAX_ATTENTION * B * (1 + C) * (P + C):
        return None
    starts = torch.cumsum(seg, 0) - seg  # [B]
    row = torch.repeat_interleave(torch.arange(B, device=dev), seg)  # [N]
    offset = torch.arange(N, device=dev) - starts[row]  # [N] 0 = the last prompt token
    group = row_to_group[row]  # [N]
    prefix = attention_mask[first, : P - 1].bool()  # [U, P-1]
    sees_prefix = (torch.arange(U, device=dev)[None, :, None] == group[:, None, None]) & prefix[None]  # [N, U, P-1]
    n = torch.arange(N, device=dev)
    sees_rows = (row[:, None] == row[None, :]) & (n[None, :] <= n[:, None])  # [N, N]
    mask = torch.cat([sees_prefix.reshape(N, U * (P - 1)), sees_rows], 1)[None, None]  # [1, 1, N, kv]
    labels_at = offset > 0  # [N]
    j = torch.arange(1 + C, device=dev)  # [1 + C]
    q_index = torch.where(j[None] < seg[:, None], starts[:, None] + j[None], torch.full_like(j[None], N))  # [B, 1 + C]
    c = torch.arange(P + C, device=dev)  # [P + C]
    in_prefix = row_to_group[:, None] * (P - 1) + c[None]  # [B, P + C]
    in_rows = U * (P - 1) + starts[:, None] + (c[None] - (P - 1))
    k_index = torch.where(c[None] < P - 1, in_prefix,
                          torch.where(c[None] - (P - 1) < seg[:, None], in_rows, torch.full_like(in_rows, kv)))
    return PackedRows(token=(row, P - 1 + offset), positions=P - 1 + offset, mask=mask, labels=labels_at,
                      scored=labels_at.nonzero().squeeze(1) - 1, completion=completion, q_index=q_index, k_index=k_index)


def _packed_rows_pass(model, input_ids, cache, packed: PackedRows, compute_entropy, rows_context):
    """The rows' pass of :func:`shared_prompt_logps`, packed (:func:`pack_rows`); inside its autocast."""
    for layer in cache.layers:  # [U, KV, P-1, D] -> [1, KV, U(P-1), D]: the prompts side by side
        layer.keys = layer.keys.transpose(0, 1).flatten(1, 2)[None]
        layer.values = layer.values.transpose(0, 1).flatten(1, 2)[None]
    ids = input_ids[packed.token]  # [N]
    labels = ids.masked_fill(~packed.labels, -100)

    def unpack(q, k):  # packed [1, H, N, D], [1, KV, kv, D] -> rows [B, H, 1 + C, D], [B, KV, P + C, D]
        q = torch.cat([q, q.new_zeros(*q.shape[:2], 1, q.shape[3])], 2)[0][:, packed.q_index].transpose(0, 1)
        k = torch.cat([k, k.new_zeros(*k.shape[:2], 1, k.shape[3])], 2)[0][:, packed.k_index].transpose(0, 1)
        return q, k

    mask = packed.mask  # sdpa takes the bool mask (True: attend); eager adds its mask to the scores
    if model.config._attn_implementation == "eager":
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    with (rows_context or _no_rows_context)(unpack):
        out = model(input_ids=ids[None], attention_mask=mask, position_ids=packed.positions[None],
                    past_key_values=cache, labels=labels[None], fused_lm_head=True)
    zeros = packed.completion.new_zeros(packed.completion.shape, dtype=out.log_probs.dtype)  # [B, C]
    logps = zeros.masked_scatter(packed.completion, out.log_probs[0, packed.scored])
    entropies = zeros.masked_scatter(packed.completion, out.entropy[0, packed.scored]) if compute_entropy else None
    return logps, entropies


@contextlib.contextmanager
def _no_rows_context(unpack):
    yield


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
