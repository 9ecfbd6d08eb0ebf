"""The ``transformers`` rollout backend: batched ``generate`` with the policy itself.

Why: it is the default on CPU and the reference the vLLM backend is checked against. It needs no
weight hand-over (the policy *is* the generator), so ``sync`` is a no-op, except with
``merge_lora=True``: a LoRA policy then generates with a plain copy of its base model whose weights
``sync`` sets to W + ΔW (rollouts.merge) once per policy version, so the decode steps skip PEFT's
extra matmuls (measured 26 % of generation time on the embedded model). Per-token sampling
log-probs come from ``generate``'s processed ``scores`` (after repetition penalty, temperature,
top-k/top-p/min-p: the distribution the token was actually drawn from), which is what vLLM's
``logprobs_mode="processed_logprobs"`` returns too. Memory: the scores of one micro-batch are held
until it finishes (micro_batch × max_tokens × vocab floats), so ``micro_batch_size`` bounds it.

``drop_finished`` (default): decode with rlattn's own loop (``_decode``) instead of ``generate``,
dropping each row from the batch (and its cache) as soon as it ends. ``generate`` keeps finished
rows in every decode step until the longest one ends; a decode step of the embedded model cost
0.32 s at 32 rows and 0.135 s at 8 here, and completions of the main recipe end anywhere between
20 and 80 tokens. The loop samples from the distribution ``SamplingSpec`` describes with
transformers' own processors (repetition penalty, then temperature, top-k, top-p, min-p, in
``generate``'s order); greedy tokens and all log-probs are those of ``generate`` up to round-off,
sampled tokens are different draws (a finished row no longer consumes random numbers). A model's
``generation_config`` does not add processors here, as with the vLLM backend.

``fast_decode`` (default): the loop's decode steps copy no KV cache. transformers'
cache concatenates every layer's keys and values each step (quadratic copying), and its sdpa path
repeats the KV heads of a GQA model for every padded batch (``repeat_kv``: a copy of the whole
cache, per layer, per step). Here the cache is preallocated for the prompt plus ``max_tokens``
(``PreallocatedLayer``) and, with sdpa, a one-token query reads its KV head in place: its ``groups`` query
heads become ``groups`` query rows of one sdpa call per KV head (``_gqa_decode_attention``), the
same arithmetic as repeating the heads. On the main recipe the two copies were 23 % of the decode
time (torch profiler: ``aten::copy_`` of ``repeat_kv`` and ``aten::cat`` of the cache); the
results equal the plain path up to round-off (tested).

``share_prompts`` (default): GRPO asks for each prompt ``num_generations`` times. With it, a micro-batch's
distinct prompts are prefilled once each and the cache is copied to their rows before decoding
(``_prefill``), instead of prefilling every row: on the main recipe (4 prompts x 8 rows of
~150 tokens) the prefill was ~40 % of generation. The logits are those of the unshared prefill up
to round-off; the random draws are the same.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from .base import PromptTooLongError, RolloutBatch, SamplingSpec


class HFRolloutBackend:
    """Generate with a (possibly PEFT-wrapped) transformers causal LM.

    ``eos_token_ids``: token ids that end a completion (default: the generation config's and the
    tokenizer's EOS). ``max_model_len``: prompt + completion limit (default: the model's
    ``max_position_embeddings``); longer prompts raise :class:`PromptTooLongError` or, with
    ``on_prompt_too_long="skip"``, become a counted skipped row.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, *, eos_token_ids=None, micro_batch_size: int | None = None,
                 max_model_len: int | None = None, on_prompt_too_long: str = "error", merge_lora: bool = False,
                 share_prompts: bool = True, drop_finished: bool = True, fast_decode: bool = True):
        if on_prompt_too_long not in ("error", "skip"):
            raise ValueError(f"on_prompt_too_long={on_prompt_too_long!r} is not one of 'error', 'skip'")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size={micro_batch_size!r} must be >= 1 or None (one batch)")
        self.model = model
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if eos_token_ids is None:
            gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
            if tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
            eos_token_ids = sorted(set(ids))
        if not eos_token_ids:
            raise ValueError("HFRolloutBackend needs at least one EOS token id (tokenizer has none: pass eos_token_ids)")
        self.eos_token_ids = list(eos_token_ids)
        self.micro_batch_size = micro_batch_size
        self.max_model_len = max_model_len or getattr(model.config, "max_position_embeddings", None)
        self.on_prompt_too_long = on_prompt_too_long
        self.num_skipped_total = 0
        self.merge_lora = merge_lora
        self.share_prompts = share_prompts
        self.drop_finished = drop_finished
        self.fast_decode = fast_decode
        self.num_decode_rows = 0  # row-steps the decode ran (each finished row stops counting with drop_finished)
        self.num_prefill_rows = 0  # prompt rows prefilled so far (distinct prompts per micro-batch with share_prompts)
        self._merged = None  # the plain generator of merge_lora
        self.last_sync_s = 0.0

    def sync(self, model=None, version: int = 0) -> None:
        """Point at the current policy; with ``merge_lora``, refresh the merged copy's weights."""
        if model is not None:
            self.model = model
        if not (self.merge_lora and hasattr(self.model, "peft_config")):
            return
        t0 = time.perf_counter()
        from .merge import merged_state_dict

        base = self.model.get_base_model()
        if self._merged is None:
            from transformers import AutoModelForCausalLM

            self._merged = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype).to(base.device).eval()
            self._merged.generation_config = base.generation_config
        missing, unexpected = self._merged.load_state_dict(merged_state_dict(self.model), strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(base.config, "tie_word_embeddings", False)}
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"merge_lora: the merged weights do not fit the base model (missing {sorted(set(missing) - tied)[:3]}, "
                               f"unexpected {sorted(unexpected)[:3]})")
        if tied:
            self._merged.tie_weights()
        self.last_sync_s = time.perf_counter() - t0

    @property
    def generator(self):
        return self._merged if self._merged is not None else self.model

    def close(self) -> None:
        pass

    def _check_lengths(self, prompt_ids, sampling) -> list[bool]:
        fits = []
        for i, p in enumerate(prompt_ids):
            ok = self.max_model_len is None or len(p) + 1 <= self.max_model_len
            if not ok and self.on_prompt_too_long == "error":
                raise PromptTooLongError(
                    f"prompt {i} has {len(p)} tokens; the model's limit is max_model_len={self.max_model_len} "
                    "(prompt + at least one completion token). Shorten prompts (e.g. max_prompt_length) or set "
                    "on_prompt_too_long='skip' to count and mask such rows."
                )
            fits.append(ok)
        return fits

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSpec) -> RolloutBatch:
        t0 = time.perf_counter()
        fits = self._check_lengths(prompt_ids, sampling)
        todo = [i for i, ok in enumerate(fits) if ok]
        comps: dict[int, tuple[list[int], list[float], str]] = {}
        mb = self.micro_batch_size or max(1, len(todo))
        was_training = self.model.training
        self.model.eval()
        if self.merge_lora and self._merged is None:
            self.sync()
        try:
            for s in range(0, len(todo), mb):
                rows = todo[s: s + mb]
                for i, out in zip(rows, self._generate_rows([prompt_ids[i] for i in rows], sampling)):
                    comps[i] = out
        finally:
            if was_training:
                self.model.train()
        completion_ids, logprobs, reasons = [], [], []
        for i in range(len(prompt_ids)):
            if i in comps:
                c, lp, r = comps[i]
            else:
                c, lp, r = [self.eos_token_ids[0]], [0.0], "skipped"
            completion_ids.append(c)
            logprobs.append(lp)
            reasons.append(r)
        skipped = len(prompt_ids) - len(todo)
        self.num_skipped_total += skipped
        return RolloutBatch([list(p) for p in prompt_ids], completion_ids, logprobs, reasons, num_skipped=skipped,
                            timings={"generate_s": time.perf_counter() - t0})

    def _processors(self, sampling: SamplingSpec):
        """transformers' logits processors for ``sampling``, in ``generate``'s order."""
        from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

        procs = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(penalty=sampling.repetition_penalty))
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(sampling.temperature))
            if int(sampling.top_k) > 0:
                procs.append(TopKLogitsWarper(top_k=int(sampling.top_k)))
            if sampling.top_p < 1.0:
                procs.append(TopPLogitsWarper(top_p=sampling.top_p))
            if sampling.min_p:
                procs.append(MinPLogitsWarper(min_p=sampling.min_p))
        return procs

    @torch.no_grad()
    def _decode(self, model, ids, mask, prompts, max_new: int, sampling: SamplingSpec):
        """Prefill ``ids[:, :-1]`` (left-padded [B, W]; see ``_prefill``), then decode one token per
        step for the rows still running, removing a row and its cache entries once it draws an EOS.
        Returns (tokens, log-probs, reason) per row."""
        from transformers import DynamicCache

        B, W = ids.shape
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, W] generate's positions for left padding
        cache = self._prefill(model, ids, mask, prompts)
        feed, feed_pos = (ids[:, -1:], pos[:, -1:]) if cache is not None else (ids, pos)  # [B, 1], or a one-token prompt
        cache = cache if cache is not None else DynamicCache()
        fast = self.fast_decode
        gqa = fast and getattr(model.config, "_attn_implementation", None) == "sdpa"  # eager and others keep their own
        if fast:
            _preallocate(cache, capacity=W + max_new)
        with _attention(model, _GQA_DECODE if gqa else None), _head_as_weight_times_hidden(model if fast else None):
            return self._decode_steps(model, cache, feed, feed_pos, ids, mask, max_new, sampling)

    def _decode_steps(self, model, cache, feed, feed_pos, ids, mask, max_new: int, sampling: SamplingSpec):
        B = ids.shape[0]
        procs = self._processors(sampling)
        eos = torch.tensor(self.eos_token_ids, device=ids.device)
        seen, am = ids, mask  # [b, W + t] the running rows' tokens (for the repetition penalty) and mask
        alive = torch.arange(B, device=ids.device)  # [b] row of each running row
        out_tok = torch.zeros(B, max_new, dtype=torch.long)  # [B, max_new] drawn tokens
        out_lp = torch.zeros(B, max_new)  # [B, max_new] their log-probs
        length = torch.zeros(B, dtype=torch.long)  # [B] tokens drawn per row
        stopped = torch.zeros(B, dtype=torch.bool)  # [B] ended by an EOS
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for t in range(max_new):
            logits = model(input_ids=feed, attention_mask=am, position_ids=feed_pos, past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1].float()  # [b, V]
            self.num_decode_rows += alive.numel()
            scores = procs(seen, logits)  # [b, V]
            if sampling.greedy:
                nxt = scores.argmax(-1)  # [b]
            else:
                probs = torch.softmax(scores, dim=-1)  # [b, V]
                nxt = _sample(probs) if self.fast_decode else torch.multinomial(probs, num_samples=1).squeeze(1)  # [b]
            rows = alive.cpu()
            out_tok[rows, t] = nxt.cpu()
            out_lp[rows, t] = torch.log_softmax(scores, dim=-1).gather(-1, nxt[:, None]).squeeze(-1).cpu()
            length[rows] += 1
            done = torch.isin(nxt, eos)  # [b]
            stopped[rows[done.cpu()]] = True
            if t == max_new - 1 or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)  # [b']
                cache.batch_select_indices(keep)
                alive, nxt, seen, am, feed_pos = alive[keep], nxt[keep], seen[keep], am[keep], feed_pos[keep]
            seen = torch.cat([seen, nxt[:, None]], dim=1)
            am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
            feed, feed_pos = nxt[:, None], feed_pos[:, -1:] + 1
        return [(out_tok[r, :n].tolist(), out_lp[r, :n].tolist(), "stop" if stopped[r] else "length")
                for r, n in enumerate(length.tolist())]

    def _prefill(self, model, ids, mask, prompts):
        """The KV cache of ``ids[:, :-1]`` (left-padded [B, W]), or None when W < 2. With
        ``share_prompts`` each distinct prompt runs once and its cache is copied to its rows.
        ``generate`` (or ``_decode``) then runs only the last prompt column and the decode steps: it
        starts at the cache's length. Positions are generate's own for left padding (cumsum of the
        mask), so each row sees exactly what generate's own prefill computes.

        The rows are grouped here from their token lists: rollouts sit below the training core and
        may not import its ``rlattn.shared_prompt.prompt_groups`` (docs/architecture.md)."""
        if ids.size(1) < 2:
            return None
        reps, rows = list(range(len(prompts))), None  # [U] one row per prompt; [B] its group per row
        if self.share_prompts:
            group_of: dict[tuple, int] = {}
            reps, rows = [], []
            for r, p in enumerate(prompts):
                g = group_of.setdefault(tuple(p), len(group_of))
                if g == len(reps):
                    reps.append(r)
                rows.append(g)
        idx = torch.tensor(reps, device=ids.device)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, W] as generate computes them
        cache = model(input_ids=ids[idx, :-1], attention_mask=mask[idx, :-1], position_ids=pos[idx, :-1], use_cache=True,
                      logits_to_keep=1).past_key_values  # [U, heads, W-1, d] per layer
        if len(reps) < len(prompts):
            cache.batch_select_indices(torch.tensor(rows, device=ids.device))  # -> [B, heads, W-1, d]
        self.num_prefill_rows += len(reps)
        return cache

    def _generate_rows(self, prompts: list[list[int]], sampling: SamplingSpec):
        model = self.generator
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        max_new = sampling.max_tokens
        if self.max_model_len is not None:
            max_new = max(1, min(max_new, self.max_model_len - width))
        ids, mask = ids.to(device), mask.to(device)
        if self.drop_finished:
            return self._decode(model, ids, mask, prompts, max_new, sampling)
        kwargs = dict(
            max_new_tokens=max_new, do_sample=not sampling.greedy, eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id, output_scores=True, return_dict_in_generate=True,
            repetition_penalty=sampling.repetition_penalty,
        )
        if sampling.greedy:
            # neutral warper values so a model's generation_config (e.g. temperature 0.6) is not applied
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            # top_k 0 disables top-k explicitly: None would let generation_config's default (50) apply
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=max(0, int(sampling.top_k)),
                          min_p=sampling.min_p or None)
        cache = self._prefill(model, ids, mask, prompts)
        if cache is not None:
            kwargs["past_key_values"] = cache
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        gen = out.sequences[:, width:].cpu()  # [B, T]
        # the sampled tokens' log-probs, step by step (never a [B, T, V] stack of the whole vocabulary)
        logp = torch.stack([torch.log_softmax(s.float(), dim=-1).gather(-1, gen[:, t, None].to(s.device)).squeeze(-1)
                            for t, s in enumerate(out.scores)], dim=1).cpu()  # [B, T]
        tok_logp = logp  # [B, T]
        eos = torch.tensor(self.eos_token_ids)
        results = []
        for r in range(gen.shape[0]):
            row = gen[r].tolist()
            hits = torch.isin(gen[r], eos).nonzero()
            if len(hits):
                n, reason = int(hits[0]) + 1, "stop"
            else:
                n, reason = len(row), "length"
            results.append((row[:n], tok_logp[r, :n].tolist(), reason))
        return results


# --- fast_decode: decode steps that copy no KV cache ---------------------------------------------

_BLOCK = 256  # vocabulary block of the inverse-CDF sampler


def _sample(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` [b, V] (rows sum to ~1), by inverse CDF with one float64 uniform.

    The cumulative mass is two-level so float32 round-off stays local: within blocks of ``_BLOCK``
    tokens in the probabilities' dtype (error <= eps x the block's mass), across blocks in float64.
    A token of probability 0 is never drawn (``right=True`` skips flat stretches, and a residual
    rounded past its block's mass is pulled back below it). Returns [b] token ids."""
    b, V = probs.shape
    nb = -(-V // _BLOCK)
    inner = torch.nn.functional.pad(probs, (0, nb * _BLOCK - V)).view(b, nb, _BLOCK).cumsum(-1)  # [b, nb, blk]
    outer = inner[..., -1].double().cumsum(-1)  # [b, nb] mass up to the end of each block
    u = torch.rand(b, 1, dtype=torch.float64, device=probs.device) * outer[:, -1:]  # [b, 1]
    j = torch.searchsorted(outer, u, right=True).clamp(max=nb - 1)  # [b, 1] the block u falls in
    start = torch.where(j > 0, outer.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(u))  # [b, 1]
    row = inner.gather(1, j[:, :, None].expand(b, 1, _BLOCK)).squeeze(1)  # [b, blk] that block's cumulative mass
    top = row[:, -1:]
    r = torch.minimum((u - start).to(probs.dtype), torch.nextafter(top, torch.zeros_like(top)))  # [b, 1]
    i = torch.searchsorted(row, r, right=True).clamp(max=_BLOCK - 1)  # [b, 1]
    return (j * _BLOCK + i).squeeze(1)


@contextlib.contextmanager
def _head_as_weight_times_hidden(model):
    """Compute the LM head as ``(W @ h.T).T`` while inside (None, or a head that is not a plain
    bias-free ``nn.Linear``: as it is). Same dot products, a layout the CPU BLAS runs faster for
    few rows and a large vocabulary (see the module docstring)."""
    head = model.get_output_embeddings() if model is not None and hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        yield
        return

    def forward(h):  # [..., d] -> [..., V]
        flat = h.reshape(-1, h.shape[-1])  # [n, d]
        return (head.weight @ flat.T).T.reshape(*h.shape[:-1], head.weight.shape[0])

    head.forward = forward
    try:
        yield
    finally:
        del head.forward

_GQA_DECODE = "rlattn_gqa_decode"  # the attention implementation's name in transformers' registries


def _gqa_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """sdpa for a decode step without ``repeat_kv``: query [b, h, 1, d], key/value [b, kv, T, d].

    Query head ``j * groups + g`` reads KV head ``j`` (``repeat_kv``'s order), so the ``groups``
    heads of a KV head are ``groups`` query rows of one call: [b, kv, groups, d] against [b, kv, T, d],
    the mask ([b, 1, 1, T]) broadcast over them. Anything else (prefill, no GQA, a position bias)
    is transformers' own sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    kv = key.shape[1]
    if q != 1 or kv == h or kwargs.get("position_bias") is not None or value.shape[-1] != d:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, -1:]  # [b, 1|h, 1, T]
        if mask.shape[1] != 1:  # a per-head mask: the same grouping as the query heads
            mask = mask.reshape(b, kv, h // kv, -1)
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(b, kv, h // kv, d), key, value, attn_mask=mask,
                                                           dropout_p=0.0, scale=scaling)  # [b, kv, groups, d]
    return out.reshape(b, 1, h, d), None  # [b, 1, h, d], as sdpa_attention_forward returns it


def _register_gqa_decode() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if _GQA_DECODE not in AttentionInterface._global_mapping:
        AttentionInterface.register(_GQA_DECODE, _gqa_decode_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(_GQA_DECODE, sdpa_mask)  # the masks sdpa gets


@contextlib.contextmanager
def _attention(model, name: str | None):
    """Run ``model`` with the attention implementation ``name`` (None: as it is), then restore it."""
    if name is None:
        yield
        return
    _register_gqa_decode()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def _preallocate(cache, capacity: int) -> None:
    """Turn ``cache``'s plain dynamic layers into ``PreallocatedLayer`` of ``capacity`` positions."""
    from transformers.cache_utils import DynamicLayer

    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = _preallocated_layer_class()(layer.keys, layer.values, capacity)


@functools.cache
def _preallocated_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A dynamic cache layer whose keys/values live in one buffer [b, kv, capacity, d]: a step
        writes its column in place and ``keys``/``values`` are views of the filled part, instead of a
        ``torch.cat`` of the whole cache per step. Past ``capacity`` it doubles (never happens in the
        decode loop, which sizes it for prompt + max_tokens)."""

        def __init__(self, keys, values, capacity: int):
            super().__init__()
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self._n = keys.shape[-2]
            self._k = keys.new_empty(*keys.shape[:2], max(capacity, self._n), keys.shape[-1])  # [b, kv, cap, d]
            self._v = values.new_empty(*values.shape[:2], max(capacity, self._n), values.shape[-1])
            self._k[:, :, :self._n] = keys
            self._v[:, :, :self._n] = values
            self._views()

        def _views(self):
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]  # [b, kv, n, d]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if self._n + n > self._k.shape[-2]:
                grow = max(self._n + n, 2 * self._k.shape[-2]) - self._k.shape[-2]
                self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], grow, self._k.shape[-1])], dim=-2)
                self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], grow, self._v.shape[-1])], dim=-2)
            self._k[:, :, self._n:self._n + n] = key_states
            self._v[:, :, self._n:self._n + n] = value_states
            self._n += n
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._n

        def batch_select_indices(self, indices):
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("the decode loop's preallocated cache is not cropped")

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
            self._views()

    return PreallocatedLayer
