"""Exact, streaming attention statistics: head spans, WAAD and FAI (docs/credit.md).

Idea. The paper (Li et al., arXiv 2510.13554) reads two signals off the policy's attention:
- WAAD[t] = Σ_{s≤t} Ā_loc[t,s]·min(t−s, W): how far back locally-focused heads look from token t
  (its jumps mark *preplan* tokens at chunk boundaries);
- FAI[s] = mean over t∈R with H_lo ≤ t−s ≤ H_hi of Ā_glob[t,s]: how much later reasoning keeps
  attending to token s through globally-focused heads (its peaks are *anchor* tokens).
Heads are split by span(l,h) = mean_{t∈R} Σ_s A[t,s]·(t−s): the 30% smallest are local, the
30% largest global (per sequence by default).

The paper ran an extra eager model and materialised every N×N map. We instead capture each
selected layer's post-RoPE q/k in the policy's own forward (``capture.py``), stop the forward after
the last selected layer, and recompute the softmax in fp32 in chunks of query rows. Each chunk is
reduced at once, per head, to
  (a) Σ_s A[t,s]·(t−s) = t − Σ_s A[t,s]·s         (rows sum to 1)        -> head span
  (b) W − Σ_{j<W} (W−j)·A[t,t−j]                  (a band of W diagonals) -> per-head WAAD
  (c) Σ_{t∈R, H_lo≤t−s≤H_hi} A[t,s]               (a band of columns)     -> per-head FAI sums
Ā is linear in A and |T(s)| does not depend on the head, so averaging (b) and (c) over the chosen
heads afterwards is exact. Peak extra memory is O(B·H·chunk·N) for one chunk's probabilities plus
O(B·layers·H·N) for the per-head vectors: never an N×N map per head.

Glossary: B batch, N sequence length (prompt ⊕ response with padding), L layers, H query heads,
KV key/value heads, D head dim, C query rows per chunk, nL selected layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import time

from .capture import attention_modules, num_hidden_layers, run_captured, unwrap_model

HEAD_SELECTIONS = ("sequence", "batch", "fixed")


def default_layers(num_layers_total: int, count: int = 5) -> list[int]:
    """Spec §1: ``sorted(set(round(x) for x in linspace(L//3, 2L//3, count)))`` (Python's round)."""
    lo, hi = num_layers_total // 3, 2 * num_layers_total // 3
    if count == 1:
        return [round((lo + hi) / 2)]
    return sorted({round(lo + (hi - lo) * i / (count - 1)) for i in range(count)})


@dataclass
class AttentionStatsConfig:
    """Which layers/heads to read and how to reduce them (docs/credit.md).

    Fields marked [ours] are choices the paper leaves open.
    """

    layers: list[int] | None = None
    num_layers: int = 5
    window: int = 10
    fai_horizon: tuple[int, int] = (10, 100)
    local_quantile: float = 0.3
    global_quantile: float = 0.3
    head_selection: str = "sequence"
    # [ours] head_selection="fixed": explicit (layer, head) pairs, e.g. from a first batch.
    fixed_local_heads: list[tuple[int, int]] | None = None
    fixed_global_heads: list[tuple[int, int]] | None = None
    # [ours] query rows per chunk; None picks it from memory_budget_mb.
    chunk_size: int | None = None
    memory_budget_mb: float = 256.0

    def __post_init__(self):
        def bad(key, value, allowed):
            raise ValueError(f"AttentionStatsConfig.{key}={value!r} is invalid: {allowed}")

        if self.layers is not None:
            self.layers = [int(l) for l in self.layers]
            if not self.layers:
                bad("layers", self.layers, "give at least one layer index, or None for the default")
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            bad("num_layers", self.num_layers, "a positive int")
        if not isinstance(self.window, int) or self.window < 1:
            bad("window", self.window, "a positive int")
        self.fai_horizon = tuple(int(x) for x in self.fai_horizon)
        if len(self.fai_horizon) != 2 or not (1 <= self.fai_horizon[0] <= self.fai_horizon[1]):
            bad("fai_horizon", self.fai_horizon, "a pair (H_lo, H_hi) with 1 <= H_lo <= H_hi")
        for key in ("local_quantile", "global_quantile"):
            v = getattr(self, key)
            if not (0.0 < float(v) <= 1.0):
                bad(key, v, "a fraction in (0, 1]")
        if self.head_selection not in HEAD_SELECTIONS:
            bad("head_selection", self.head_selection, f"one of {HEAD_SELECTIONS}")
        if self.head_selection == "fixed" and (not self.fixed_local_heads or not self.fixed_global_heads):
            bad("head_selection", "fixed", "needs fixed_local_heads and fixed_global_heads as lists of [layer, head] "
                "(YAML: attn_fixed_local_heads and attn_fixed_global_heads as 'layer:head' strings)")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            bad("chunk_size", self.chunk_size, "a positive int or None")
        if not self.memory_budget_mb > 0:
            bad("memory_budget_mb", self.memory_budget_mb, "a positive number of MB")

    def resolve_layers(self, total: int) -> list[int]:
        layers = sorted(set(self.layers)) if self.layers is not None else default_layers(total, self.num_layers)
        out = [l for l in layers if not 0 <= l < total]
        if out:
            raise ValueError(f"AttentionStatsConfig.layers={self.layers!r}: {out} out of range for a {total}-layer model (0..{total - 1})")
        return layers


@dataclass
class AttentionStats:
    """Per-token and per-head statistics for a batch (docs/credit.md)."""

    waad: torch.Tensor  # float32 [B, N]; 0 outside the response
    fai: torch.Tensor  # float32 [B, N]; NaN where undefined
    head_span: torch.Tensor  # float32 [B, nL, H]
    local_heads: torch.Tensor  # bool [B, nL, H]
    global_heads: torch.Tensor  # bool [B, nL, H]
    layers: list[int] = field(default_factory=list)


def _first_position(bad: torch.Tensor) -> str:
    b, t = bad.nonzero()[0].tolist()
    return f"sequence {b}, position {t}"


def _vocab_size(model) -> int | None:
    """Rows of the model's input embeddings (the ids it can look up), or None if it has none to ask."""
    try:
        emb = unwrap_model(model).get_input_embeddings()
        return int(emb.num_embeddings) if emb is not None and hasattr(emb, "num_embeddings") else None
    except (AttributeError, NotImplementedError, TypeError):
        return None


def _check_inputs(input_ids, attention_mask, response_mask, vocab_size: int | None = None):
    for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask), ("response_mask", response_mask)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor [B, N], got {getattr(t, 'shape', type(t))}")
    if not (input_ids.shape == attention_mask.shape == response_mask.shape):
        raise ValueError(
            f"shape mismatch: input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)}, "
            f"response_mask {tuple(response_mask.shape)} must all be [B, N]"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: give at least one sequence (B >= 1) of at least "
                         "one token (N >= 1)")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    negative = input_ids < 0  # [B, N]
    if negative.any():
        where = _first_position(negative)
        raise ValueError(f"input_ids has a negative id ({int(input_ids[negative][0])}) at {where}: token ids are 0.."
                         f"{'vocab_size - 1' if vocab_size is None else vocab_size - 1} (pad with the pad token id, not -100)")
    if vocab_size is not None:
        beyond = input_ids >= vocab_size  # [B, N]
        if beyond.any():
            raise ValueError(f"input_ids has id {int(input_ids[beyond][0])} at {_first_position(beyond)}, but the model's "
                             f"input embeddings have {vocab_size} rows (ids 0..{vocab_size - 1}): ids from another "
                             "tokenizer, or a model whose embeddings were not resized")
    for name, t in (("attention_mask", attention_mask), ("response_mask", response_mask)):
        if t.dtype != torch.bool:
            off = (t != 0) & (t != 1)  # [B, N]
            if off.any():
                raise ValueError(f"{name} has value {t[off][0].item()!r} at {_first_position(off)}: masks must be 0/1 "
                                 "(or bool)")
    am, rm = attention_mask.bool(), response_mask.bool()
    outside = rm & ~am
    if outside.any():
        b, t = outside.nonzero()[0].tolist()
        raise ValueError(f"response_mask marks position {t} of sequence {b} where attention_mask is 0 (padding)")
    empty = ~rm.any(dim=1)
    if empty.any():
        raise ValueError(f"empty response in sequence(s) {empty.nonzero().flatten().tolist()}: every sequence needs >= 1 response token")
    # padding only at the ends: the real tokens form one contiguous block per row
    blocks = (am[:, 1:] & ~am[:, :-1]).sum(1) + am[:, 0].long()
    if (blocks > 1).any():
        raise ValueError(f"attention_mask of sequence(s) {(blocks > 1).nonzero().flatten().tolist()} has padding between real tokens")
    return am, rm


def _auto_chunk(cfg: AttentionStatsConfig, B: int, H: int, N: int) -> int:
    if cfg.chunk_size is not None:
        return cfg.chunk_size
    # about three fp32 [B, H, C, N] buffers live at once (scores/probs, a temporary, masks)
    per_row = 3 * B * H * N * 4
    return int(max(1, min(N, cfg.memory_budget_mb * 2**20 // per_row)))


class _LayerReducer:
    """Reduces one captured layer's q/k to per-head span sums, WAAD and FAI band sums."""

    def __init__(self, key_mask, resp_mask, cfg: AttentionStatsConfig, n_sel: int):
        self.key_mask = key_mask  # bool [B, N]
        self.resp = resp_mask  # bool [B, N]
        self.cfg = cfg
        self.n_sel = n_sel
        B, N = key_mask.shape
        self.B, self.N = B, N
        self.first_row = int(resp_mask.any(0).nonzero()[0])  # rows before any response are skipped
        self.span_sum = None  # [B, nL, H]
        self.waad_h = None  # [B, nL, H, N]
        self.fai_h = None  # [B, nL, H, N]
        self.slot = {}

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, scaling: float) -> None:
        # fp32 whatever the caller's autocast (the trainer runs the forward under bf16 autocast)
        with torch.autocast(device_type=q.device.type, enabled=False):
            self._reduce(layer, q, k, scaling)

    def _reduce(self, layer: int, q: torch.Tensor, k: torch.Tensor, scaling: float) -> None:
        cfg, B, N = self.cfg, self.B, self.N
        _, H, Nq, D = q.shape
        KV = k.shape[1]
        # q may hold only the last Nq positions (a pass on top of a cached prompt prefix, whose keys
        # come from the cache): only response rows are read, so they must all be among them
        q_off = N - Nq
        if q.shape[0] != B or k.shape[0] != B or k.shape[2] != N or not 0 <= q_off <= self.first_row:
            raise ValueError(f"captured query/key of layer {layer} have shapes {tuple(q.shape)}/{tuple(k.shape)}, expected "
                             f"[B={B}, H, N' >= {N - self.first_row}, D] / [B, KV, N={N}, D]")
        G = H // KV
        dev = q.device
        if self.span_sum is None:
            self.span_sum = torch.zeros(B, self.n_sel, H, device=dev)
            self.waad_h = torch.zeros(B, self.n_sel, H, N, device=dev)
            self.fai_h = torch.zeros(B, self.n_sel, H, N, device=dev)
        i = self.slot.setdefault(layer, len(self.slot))
        W, (h_lo, h_hi) = cfg.window, cfg.fai_horizon
        q = q.detach().float().view(B, KV, G, Nq, D)  # [B, KV, G, Nq, D]: positions q_off .. N-1
        k = k.detach().float()  # [B, KV, N, D]
        key_mask = self.key_mask.to(dev)
        resp = self.resp.to(dev)
        pos = torch.arange(N, device=dev, dtype=torch.float32)  # [N]
        chunk = _auto_chunk(cfg, B, H, N)
        span_acc = torch.zeros(B, H, device=dev)
        waad = torch.zeros(B, H, N, device=dev)
        fai = torch.zeros(B, H, N, device=dev)
        offs = torch.arange(W, device=dev)  # [W]
        weights = (W - offs).float()  # [W]  (W - j)
        for t0 in range(self.first_row, N, chunk):
            t1 = min(t0 + chunk, N)
            C = t1 - t0
            rows = torch.arange(t0, t1, device=dev)  # [C]
            scores = torch.matmul(q[:, :, :, t0 - q_off:t1 - q_off], k[:, :, None, :t1].transpose(-1, -2))  # [B, KV, G, C, t1]
            scores = scores.view(B, H, C, t1).mul_(scaling)  # [B, H, C, t1]
            valid = (torch.arange(t1, device=dev)[None, :] <= rows[:, None])[None] & key_mask[:, None, :t1]  # [B, C, t1]
            scores.masked_fill_(~valid[:, None], float("-inf"))
            probs = torch.softmax(scores, dim=-1)  # [B, H, C, t1]; NaN rows = no real key (left padding)
            del scores
            row_ok = resp[:, t0:t1]  # [B, C]  only response rows count
            # (a) head span: Σ_s A[t,s](t-s) = t - Σ_s A[t,s]·s
            dist_mean = rows.float()[None, None] - torch.matmul(probs, pos[:t1])  # [B, H, C]
            span_acc += torch.where(row_ok[:, None], dist_mean, 0.0).sum(-1)  # [B, H]
            # (b) WAAD = W - Σ_{j<W} (W-j)·A[t, t-j]  (the W diagonals ending at t)
            idx = (rows[:, None] - offs[None, :])  # [C, W]
            band_ok = idx >= 0  # [C, W]
            diag = torch.gather(probs, 3, idx.clamp(min=0).expand(B, H, C, W))  # [B, H, C, W]
            diag = torch.where(band_ok, diag, 0.0)
            w_rows = W - (diag * weights).sum(-1)  # [B, H, C]
            waad[:, :, t0:t1] = torch.where(row_ok[:, None], w_rows, 0.0)
            # (c) FAI column sums over the band h_lo <= t - s <= h_hi, response rows only
            s_lo, s_hi = max(0, t0 - h_hi), t1 - h_lo  # columns touched by this chunk's band
            if s_hi > s_lo:
                cols = torch.arange(s_lo, s_hi, device=dev)  # [S]
                gap = rows[:, None] - cols[None, :]  # [C, S]
                in_band = (gap >= h_lo) & (gap <= h_hi)  # [C, S]
                take = in_band[None] & row_ok[:, :, None]  # [B, C, S]
                part = torch.where(take[:, None], probs[..., s_lo:s_hi], 0.0)  # [B, H, C, S]
                fai[:, :, s_lo:s_hi] += part.sum(2)  # [B, H, S]
            del probs
        self.span_sum[:, i] = span_acc
        self.waad_h[:, i] = waad
        self.fai_h[:, i] = fai


def _select(span: torch.Tensor, quantile: float, largest: bool) -> torch.Tensor:
    """Pick ceil(q·n) heads per row of span [B, nL, H] (ties: lower layer, then lower head first)."""
    B, nL, H = span.shape
    n = nL * H
    k = min(n, math.ceil(quantile * n - 1e-9))
    flat = span.reshape(B, n)
    key = -flat if largest else flat
    order = torch.sort(key, dim=1, stable=True).indices[:, :k]  # [B, k]; stable sort keeps index order on ties
    chosen = torch.zeros(B, n, dtype=torch.bool, device=span.device)
    chosen.scatter_(1, order, True)
    return chosen.view(B, nL, H)


def _fixed_mask(pairs, layers, H, B, device, key) -> torch.Tensor:
    m = torch.zeros(len(layers), H, dtype=torch.bool, device=device)
    for pair in pairs:
        l, h = int(pair[0]), int(pair[1])
        if l not in layers or not 0 <= h < H:
            raise ValueError(f"AttentionStatsConfig.{key} has ({l}, {h}); layers are {layers} and heads 0..{H - 1}")
        m[layers.index(l), h] = True
    return m[None].expand(B, -1, -1).clone()


def horizon_counts(response_mask: torch.Tensor, h_lo: int, h_hi: int) -> torch.Tensor:
    """|T(s)| = #{t ∈ R : s + h_lo <= t <= s + h_hi} for every position s. [B, N] float32."""
    B, N = response_mask.shape
    csum = torch.cat([torch.zeros(B, 1, device=response_mask.device), response_mask.float().cumsum(1)], 1)  # [B, N+1]
    s = torch.arange(N, device=response_mask.device)
    hi = (s + h_hi).clamp(max=N - 1)  # [N]
    lo = s + h_lo  # [N]
    valid = lo <= N - 1
    counts = csum[:, hi + 1] - csum[:, lo.clamp(max=N)]  # [B, N]
    return torch.where(valid[None], counts, 0.0)


class StatsAccumulator:
    """Reduces the captured q/k of one forward, or of consecutive chunks of rows of one batch (TRL's
    micro-batched passes call the model once per chunk), into :class:`AttentionStats` for all rows.

    ``attention_mask`` and ``response_mask`` are bool [B, N] for the whole batch; a chunk begins at
    every capture of the first selected layer and takes the next ``q.shape[0]`` rows. ``callback``
    is the capture callback; ``callback_with(observer)`` also calls ``observer(rows, layer, q, k,
    scaling)`` with the chunk's row slice. ``reduce_time`` is the time spent reducing (seconds).
    """

    def __init__(self, cfg: AttentionStatsConfig, layers: list[int], attention_mask, response_mask):
        self.cfg, self.layers = cfg, list(layers)
        self.am, self.resp = attention_mask.bool(), response_mask.bool()  # [B, N]
        self.parts: list[tuple[int, int, _LayerReducer]] = []  # (first row, rows, reducer)
        self.rows_seen = 0
        self.reduce_time = 0.0

    def _chunk(self, layer: int, q: torch.Tensor):
        if layer == self.layers[0] or not self.parts:  # a new chunk of rows begins
            b0, rows = self.rows_seen, q.shape[0]
            if b0 + rows > self.am.shape[0]:
                raise ValueError(f"captured {b0 + rows} rows for a batch of {self.am.shape[0]}")
            reducer = _LayerReducer(self.am[b0 : b0 + rows], self.resp[b0 : b0 + rows], self.cfg, len(self.layers))
            self.parts.append((b0, rows, reducer))
            self.rows_seen += rows
        return self.parts[-1]

    def callback(self, layer: int, q: torch.Tensor, k: torch.Tensor, scaling: float) -> None:
        t0 = time.perf_counter()
        self._chunk(layer, q)[2](layer, q, k, scaling)
        self.reduce_time += time.perf_counter() - t0

    def callback_with(self, observer):
        def callback(layer, q, k, scaling):
            self.callback(layer, q, k, scaling)
            b0, rows, _ = self.parts[-1]
            observer(slice(b0, b0 + rows), layer, q, k, scaling)

        return callback

    def result(self) -> AttentionStats:
        if self.rows_seen != self.am.shape[0]:
            raise ValueError(f"the statistics pass captured {self.rows_seen} of {self.am.shape[0]} rows")
        merged = self.parts[0][2]
        if len(self.parts) > 1:
            merged.span_sum = torch.cat([r.span_sum for _, _, r in self.parts])
            merged.waad_h = torch.cat([r.waad_h for _, _, r in self.parts])
            merged.fai_h = torch.cat([r.fai_h for _, _, r in self.parts])
        return finalize_stats(merged, self.layers, self.am, self.resp, self.cfg)


def check_attention_features(model, layers: list[int], max_length=None) -> None:
    """Refuse, before training, attention that is not plain causal softmax on the selected layers.

    Logit soft-capping and attention sinks always change the softmax; a sliding window, and Llama 4's
    chunked attention (a query sees only the keys of its own block of ``attention_chunk_size``
    positions, applied through the mask alone), change it only for sequences longer than the window
    or chunk, so they are accepted when ``max_length`` (the longest prompt plus
    ``max_completion_length``) fits inside. ``max_length`` may be a callable, called only when a
    selected layer has a window or chunks (it may have to tokenize a whole dataset). With it
    unknown (None) the check is left to the capture, which refuses a longer sequence when it sees one.
    """
    config = unwrap_model(model).config
    config = getattr(config, "text_config", None) or config
    where = f"{type(unwrap_model(model)).__name__} layers {layers}"
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise ValueError(f"{where} use logit soft-capping (attn_logit_softcapping={softcap}); rlattn's attention statistics "
                         "support plain causal softmax attention only. Use credit_strategy uniform, random or high_entropy "
                         "with this model, or a model without soft-capping.")
    modules = attention_modules(model)
    if any(getattr(modules[l][1], "sinks", None) is not None for l in layers if l in modules):
        raise ValueError(f"{where} use attention sinks (learned per-head sink logits); rlattn's attention statistics support "
                         "plain causal softmax attention only. Use credit_strategy uniform, random or high_entropy with this model.")
    types = getattr(config, "layer_types", None)
    full = [l for l in range(len(types)) if types[l] == "full_attention"] if types else "none"
    window = getattr(config, "sliding_window", None)
    chunk = getattr(config, "attention_chunk_size", None)
    sliding = [l for l in layers if (types[l] == "sliding_attention" if types else getattr(config, "use_sliding_window", True))] \
        if window is not None else []
    chunked = [l for l in layers if types and types[l] == "chunked_attention"] if chunk is not None else []
    if not sliding and not chunked:
        return
    max_length = max_length() if callable(max_length) else max_length
    if max_length is None:
        return  # the capture refuses a sequence longer than the window or chunk when it sees one
    if window is not None:
        if sliding and max_length > window:
            raise ValueError(f"{type(unwrap_model(model)).__name__} layers {sliding} use sliding-window attention (sliding_window="
                             f"{window}) and sequences here reach {max_length} tokens (longest prompt + max_completion_length): "
                             "the window would change the attention statistics. Choose attn_layers among the full-attention "
                             f"layers ({full}), keep sequences within the window, or use credit_strategy uniform, random or "
                             "high_entropy.")
    if chunked and max_length > chunk:
        raise ValueError(f"{type(unwrap_model(model)).__name__} layers {chunked} use chunked attention (attention_chunk_size="
                         f"{chunk}) and sequences here reach {max_length} tokens (longest prompt + max_completion_length): "
                         "the chunks would change the attention statistics. Choose attn_layers among the full-attention "
                         f"layers ({full}), keep sequences within one chunk, or use credit_strategy uniform, random or "
                         "high_entropy.")


@torch.no_grad()
def compute_attention_stats(model, input_ids, attention_mask, response_mask, config: AttentionStatsConfig | None = None,
                            observer=None, **forward_kwargs) -> AttentionStats:
    """WAAD, FAI and head spans of ``model`` on prompt ⊕ response sequences (docs/credit.md).

    input_ids, attention_mask, response_mask: [B, N] (left-padded prompts and right-padded
    responses are fine; padding never in between). Runs one forward of ``model`` (PEFT and
    accelerate wrappers are fine) that stops after the last selected layer, in eval mode and
    without gradients; the statistics are computed in fp32 whatever the model's dtype.
    ``forward_kwargs`` go to the model's forward as well (e.g. ``pixel_values``). ``observer``, a
    capture callback ``(layer, q, k, scaling)``, sees every selected layer's q/k too, so other
    attention readouts can share this pass.
    """
    cfg = config or AttentionStatsConfig()
    am, rm = _check_inputs(input_ids, attention_mask, response_mask, vocab_size=_vocab_size(model))
    total = num_hidden_layers(model)
    layers = cfg.resolve_layers(total)
    acc = StatsAccumulator(cfg, layers, am, rm)
    was_training = model.training
    model.eval()
    try:
        callback = acc.callback
        if observer is not None:
            def callback(layer, q, k, scaling):
                acc.callback(layer, q, k, scaling)
                observer(layer, q, k, scaling)
        run_captured(model, layers, callback, input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False,
                     **forward_kwargs)
    finally:
        model.train(was_training)
    return acc.result()


def finalize_stats(reducer: _LayerReducer, layers, am, rm, cfg: AttentionStatsConfig) -> AttentionStats:
    """Head selection and head averaging from the per-head partial sums (always fp32)."""
    with torch.autocast(device_type=reducer.span_sum.device.type, enabled=False):
        return _finalize(reducer, layers, am, rm, cfg)


def _finalize(reducer: _LayerReducer, layers, am, rm, cfg: AttentionStatsConfig) -> AttentionStats:
    dev = reducer.span_sum.device
    am, rm = am.to(dev), rm.to(dev)
    n_resp = rm.sum(1).float()  # [B]
    span = reducer.span_sum / n_resp[:, None, None]  # [B, nL, H]
    B, nL, H = span.shape
    if cfg.head_selection == "sequence":
        local = _select(span, cfg.local_quantile, largest=False)
        glob = _select(span, cfg.global_quantile, largest=True)
    elif cfg.head_selection == "batch":
        mean_span = span.mean(0, keepdim=True)  # [1, nL, H]
        local = _select(mean_span, cfg.local_quantile, largest=False).expand(B, -1, -1).clone()
        glob = _select(mean_span, cfg.global_quantile, largest=True).expand(B, -1, -1).clone()
    else:
        local = _fixed_mask(cfg.fixed_local_heads, layers, H, B, dev, "fixed_local_heads")
        glob = _fixed_mask(cfg.fixed_global_heads, layers, H, B, dev, "fixed_global_heads")
    w_loc = local.float() / local.sum((1, 2), keepdim=True).float()  # [B, nL, H]
    w_glob = glob.float() / glob.sum((1, 2), keepdim=True).float()  # [B, nL, H]
    waad = torch.einsum("blh,blhn->bn", w_loc, reducer.waad_h)  # [B, N]
    waad = torch.where(rm, waad, 0.0)
    fai_sum = torch.einsum("blh,blhn->bn", w_glob, reducer.fai_h)  # [B, N]
    counts = horizon_counts(rm, *cfg.fai_horizon)  # [B, N]
    fai = torch.where(am & (counts > 0), fai_sum / counts.clamp(min=1), float("nan"))  # [B, N]
    return AttentionStats(waad=waad, fai=fai, head_span=span, local_heads=local, global_heads=glob, layers=list(layers))
