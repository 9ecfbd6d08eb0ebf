"""Does a model have the rhythm? Section 4 of arXiv 2510.13554 (Tables 1 and 2) as a tool.

Why. rlattn's credit strategies amplify preplan tokens (WAAD jumps) and anchor tokens (FAI peaks)
because Li et al. (*Attention Illuminates LLM Reasoning*, §4) found on Qwen3-4B-Base that the two
signals couple. Whether a given policy shows that rhythm is an empirical question; this module
measures it, on generated responses or on saved rollout records, with the project's own engine
(:func:`rlattn.credit.compute_attention_stats`) and the paper's protocol where its text gives one.

What it reports (paper v2 numbers, Qwen3-4B-Base, 70 GSM8K problems, random → observed):

1. **Entropy at WAAD peaks** (Table 2: 0.2386 → 0.3608). H_t = −Σ_v p(v|q,o_<t) log p(v|q,o_<t)
   in nats, from the model's own (temperature 1) distribution at the step that produced token t.
2. **Receiver & global FAI peak co-occurrence** (22.41 % → 60.84 %): the share of receiver-head
   FAI peaks that are also global-head FAI peaks. Receiver heads after Bogdan et al. 2025
   ("Thought Anchors"): the heads whose column ("vertical") attention scores have the highest
   kurtosis. Token level here: a head's score of token s is its own FAI[s].
3. **FAI peak at or just after a WAAD peak** (36.87 % → 52.53 %): the share of FAI peaks s with
   a WAAD peak p such that 0 ≤ s − p ≤ k.
4. Optional, costlier (``perturb``): Table 1 (top-k FAI 0.534 vs bottom-k 0.631 Jaccard, top <
   bottom in 87.14 % of trials). At a position i*, force each of the model's highest-logit
   alternatives to o_i*, continue greedily, and compare the continuation's content words with
   the continuation after the original token (Jaccard).

Definitions. "paper" = the v1/v2 text (§4.2 and App. A.1); **[ours]** = a choice the text leaves
open, always an option of :class:`RhythmConfig`.

- WAAD and FAI: ``docs/credit.md`` (W = 10, heads split 30/30 % by span, per sequence). The FAI
  horizon runs from t = s + 1 to the end of the response (paper App. A.1: "the influence scope
  spans from each token position to the end of the response"; the *training* default is
  [10, 100]); ``fai_horizon``.
- Peak **[ours]**: position t of the response is a peak of x when x[t] > x[t−1] and the first
  later value that differs from x[t] is smaller (a strict local maximum; a plateau counts once,
  at its left edge); the first and last positions never are. ``peak_min_quantile`` > 0 also
  requires x[t] ≥ that quantile of x over the response.
- Random baselines (paper §4.2: "the positions of the first metric's peaks are shuffled"): the
  *exact expectation* of the statistic when the first metric's peaks are shuffled uniformly
  within the response, count kept, over the positions where such a peak can occur (``eligible``:
  interior positions with finite values). By linearity that is, per response,
  - entropy: the mean entropy over eligible WAAD positions (App. A.1 says "over all response
    tokens": the same up to the two end tokens);
  - co-occurrence: the share of eligible receiver-FAI positions that are global-FAI peaks
    (App. A.1: "the proportion of Global FAI peaks among all tokens");
  - follows: the share of eligible FAI positions that sit 0..k after a WAAD peak (App. A.1:
    "randomly shuffling FAI peak positions (preserving their count)").
  No Monte Carlo: the baselines are exact; ``tests/rlattn/analysis`` checks them against a shuffle.
- k = 1 **[ours]** (``follow_window``: "at or just after"); co-occurrence is an exact position
  match **[ours]** (``cooccur_window`` = 0).
- Receiver heads **[ours]**: among the engine's selected layers (one shared pass), the
  ⌈0.1·n⌉ heads (``receiver_quantile``; 16 of Qwen3-4B's 160) with the largest excess kurtosis of
  their FAI over the response, averaged over problems (``receiver_selection: dataset``, as
  Bogdan et al. rank heads over many traces; ``sequence`` picks them per response).
- Aggregation: pooled over all responses ("across all generated tokens"): observed =
  Σ statistic / Σ peaks, random = Σ expected / Σ peaks, lift = observed / random − 1. Intervals:
  percentile bootstrap over problems (``bootstrap`` resamples, ``confidence``).
- Perturbation **[ours]** where the text is silent: ``perturb_positions`` top and bottom FAI
  positions per response (not within the last ``perturb_skip_last`` tokens), the
  ``perturb_candidates`` highest-logit tokens other than the original, ``perturb_horizon``
  greedy tokens, the reference continuation is the greedy one after the *original* token (our
  responses are sampled at 0.7, the paper's reference was greedy), content words = lower-cased
  words and numbers minus a short stop-word list. A trial is one response: top < bottom when the
  mean Jaccard over its top positions is below that over its bottom positions.

The attention pass: ``compute_attention_stats`` gives WAAD, FAI and the head groups; an observer
on the same early-exit forward recomputes each captured layer's softmax in fp32, chunk by chunk of
query rows, and reduces it to per-head FAI column sums ([B, H, N] per layer, never an N×N map).
One more forward gives the logits of the response rows for the entropies.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rlattn.utils import field_help as _h
import torch

__all__ = [
    "PAPER_TABLES",
    "Coupling",
    "RhythmConfig",
    "RhythmReport",
    "ResponseSignals",
    "analyze_rhythm",
    "content_words",
    "entropy_at_peaks",
    "excess_kurtosis",
    "fai_follows_waad",
    "find_peaks",
    "jaccard",
    "measure_response",
    "parse_rhythm_args",
    "peak_eligible",
    "receiver_global_cooccurrence",
    "select_receiver_heads",
    "summarize_coupling",
]

# Glossary: B batch, N prompt ⊕ response length, T response length, nL selected layers, H query
# heads, KV key/value heads, D head dim, C query rows per chunk, V vocabulary.

#: The paper's numbers (v2, Qwen3-4B-Base, 70 GSM8K problems): Table 2 (random, observed) and Table 1.
PAPER_TABLES = {
    "entropy_at_waad_peaks": {"random": 0.2386, "observed": 0.3608, "lift": 0.5197},
    "receiver_global_cooccurrence": {"random": 0.2241, "observed": 0.6084, "lift": 1.7149},
    "fai_follows_waad": {"random": 0.3687, "observed": 0.5253, "lift": 0.4247},
    "perturbation": {"top": 0.534, "bottom": 0.631, "pr_top_lt_bottom": 0.8714},
}

COUPLINGS = {
    "entropy_at_waad_peaks": ("mean entropy at WAAD peaks", "WAAD peaks shuffled within the response (= mean entropy over eligible positions)"),
    "receiver_global_cooccurrence": ("share of receiver-FAI peaks that are global-FAI peaks", "receiver-FAI peaks shuffled within the response (= share of positions that are global-FAI peaks)"),
    "fai_follows_waad": ("share of FAI peaks at or ≤ k after a WAAD peak", "FAI peaks shuffled within the response (= share of positions 0..k after a WAAD peak)"),
}

RECEIVER_SELECTIONS = ("dataset", "sequence")


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class RhythmConfig:
    """One rhythm analysis: a model, responses (generated or from records), the statistics, outputs.

    Defaults are the paper's §4 setup where it transfers ([ours] marks the choices it leaves open).
    """

    # --- what to analyse ---
    model: str = field(default="embedded:smollm2-135m-instruct", metadata=_h("Model whose attention is analysed (and which generates): embedded:<name>, a checkpoint dir, a PEFT adapter dir or a hub id."))
    dataset: str = field(default="gsm8k_test", metadata=_h("Problems to answer: a rlattn.data.load_dataset name (gsm8k_test, math500, ...) or a local .jsonl/.json/.parquet file."))
    limit: int | None = field(default=70, metadata=_h("Use the first N problems (or records). The paper used 70 GSM8K problems."))
    dataset_seed: int | None = field(default=None, metadata=_h("Shuffle the dataset with this seed before `limit` (None: file order)."))
    records: str | None = field(default=None, metadata=_h("Analyse saved rollout records (rollouts.jsonl / .parquet, or this tool's responses.jsonl) instead of generating; `model` still computes attention and entropies."))

    # --- generation (the paper: temperature 0.7, its system prompt) ---
    prompt_template: str = field(default="chat", metadata=_h("Prompt template (chat = the paper's system prompt 'Please reason step by step, and put your final answer within \\boxed{}.' + the problem)."))
    temperature: float = field(default=0.7, metadata=_h("Sampling temperature (the paper's 0.7); 0 is greedy."))
    top_p: float = field(default=1.0, metadata=_h("Nucleus mass in (0, 1]; top_k is always disabled."))
    max_new_tokens: int = field(default=320, metadata=_h("Response budget in tokens."))
    seed: int = field(default=0, metadata=_h("Sampling seed (each batch is seeded from it, the model and the first row)."))
    batch_size: int = field(default=8, metadata=_h("Responses per generate() call."))

    # --- attention statistics (as the attn_* keys of a training recipe) ---
    attn_layers: list[int] | None = field(default=None, metadata=_h("Layers to read (None: 5 evenly spaced in the middle third, docs/credit.md)."))
    attn_num_layers: int = field(default=5, metadata=_h("How many layers when attn_layers is None."))
    attn_window: int = field(default=10, metadata=_h("WAAD window W."))
    fai_horizon: list[int] | None = field(default=None, metadata=_h("FAI horizon [H_lo, H_hi] (None: [1, end of response], the paper's App. A.1 for this analysis; the training default is [10, 100])."))
    local_quantile: float = field(default=0.3, metadata=_h("Share of heads (smallest span) that are local."))
    global_quantile: float = field(default=0.3, metadata=_h("Share of heads (largest span) that are global."))
    memory_budget_mb: float = field(default=256.0, metadata=_h("Memory for one chunk of recomputed attention rows."))

    # --- the couplings ---
    peak_min_quantile: float = field(default=0.0, metadata=_h("[ours] A peak must also reach this quantile of its signal over the response (0: every strict local maximum is a peak)."))
    follow_window: int = field(default=1, metadata=_h("[ours] k of 'FAI peak at or just after a WAAD peak': 0 <= s - p <= k."))
    cooccur_window: int = field(default=0, metadata=_h("[ours] Receiver and global FAI peaks co-occur when |s - s'| <= this (0: the same position)."))
    receiver_quantile: float = field(default=0.1, metadata=_h("[ours] Share of heads (largest FAI kurtosis) that are receiver heads: ceil(q * layers * heads)."))
    receiver_selection: str = field(default="dataset", metadata=_h("[ours] dataset: one receiver set for all responses, by mean kurtosis (Bogdan et al.) | sequence: per response."))
    bootstrap: int = field(default=2000, metadata=_h("Bootstrap resamples over problems for the intervals."))
    confidence: float = field(default=0.95, metadata=_h("Interval coverage."))

    # --- optional: perturbation test (Table 1), off by default ---
    perturb: bool = field(default=False, metadata=_h("Run the perturbation test (costly: perturb_positions x 2 x (perturb_candidates + 1) greedy continuations per response)."))
    perturb_positions: int = field(default=3, metadata=_h("[ours] Top-FAI and bottom-FAI positions per response."))
    perturb_candidates: int = field(default=2, metadata=_h("[ours] Highest-logit alternative tokens forced at each position."))
    perturb_horizon: int = field(default=64, metadata=_h("[ours] Greedy continuation length (tokens)."))
    perturb_skip_last: int = field(default=16, metadata=_h("[ours] Positions within this many tokens of the response end are not perturbed."))

    # --- how to run ---
    dtype: str = field(default="float32", metadata=_h("Model dtype: auto | float32 | bfloat16 | float16 (statistics are fp32 whatever it is)."))
    device: str = field(default="auto", metadata=_h("auto (cuda when available, else cpu) | cpu | cuda | cuda:N."))
    torch_threads: int | None = field(default=None, metadata=_h("CPU threads for torch (None: torch's default)."))

    # --- outputs ---
    output_dir: str = field(default="outputs/rhythm", metadata=_h("Where report.md, report.json, responses.jsonl and plots/ go."))
    plots: bool = field(default=True, metadata=_h("Write PNG plots (per-problem lifts, one example response)."))
    example_index: int | None = field(default=None, metadata=_h("Response shown in the example plot (None: [ours] the shortest one that ended with EOS and has a coupled FAI peak)."))

    def __post_init__(self):
        def bad(key, value, allowed):
            raise ValueError(f"{key}={value!r} is invalid: {allowed}")

        for key in ("max_new_tokens", "batch_size", "attn_num_layers", "attn_window", "bootstrap",
                    "perturb_positions", "perturb_candidates", "perturb_horizon"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, v, "a positive integer")
        for key in ("limit", "torch_threads"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                bad(key, v, "a positive integer or None")
        for key in ("follow_window", "cooccur_window", "perturb_skip_last"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(key, v, "an integer >= 0")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            bad("temperature", self.temperature, "a number >= 0 (0: greedy)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", self.top_p, "a number in (0, 1]")
        if not 0 <= self.peak_min_quantile < 1:
            bad("peak_min_quantile", self.peak_min_quantile, "a quantile in [0, 1)")
        for key in ("receiver_quantile", "local_quantile", "global_quantile"):
            if not 0 < getattr(self, key) <= 1:
                bad(key, getattr(self, key), "a fraction in (0, 1]")
        if not 0 < self.confidence < 1:
            bad("confidence", self.confidence, "a coverage in (0, 1), e.g. 0.95")
        if self.receiver_selection not in RECEIVER_SELECTIONS:
            bad("receiver_selection", self.receiver_selection, f"one of {', '.join(RECEIVER_SELECTIONS)}")
        if self.fai_horizon is not None:
            h = [int(x) for x in self.fai_horizon]
            if len(h) != 2 or not 1 <= h[0] <= h[1]:
                bad("fai_horizon", self.fai_horizon, "[H_lo, H_hi] with 1 <= H_lo <= H_hi, or None for [1, end of response]")
            self.fai_horizon = h
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            bad("dtype", self.dtype, "one of auto, float32, bfloat16, float16")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", self.device, "one of auto, cpu, cuda, cuda:N")
        if self.example_index is not None and self.example_index < 0:
            bad("example_index", self.example_index, "a response index >= 0 or None")

    def stats_config(self, seq_len: int):
        """The engine's :class:`~rlattn.credit.AttentionStatsConfig` for one sequence of ``seq_len``."""
        from rlattn.credit import AttentionStatsConfig

        lo, hi = self.fai_horizon if self.fai_horizon is not None else (1, max(1, seq_len))
        return AttentionStatsConfig(layers=self.attn_layers, num_layers=self.attn_num_layers, window=self.attn_window,
                                    fai_horizon=(lo, hi), local_quantile=self.local_quantile,
                                    global_quantile=self.global_quantile, memory_budget_mb=self.memory_budget_mb)


def parse_rhythm_args(argv: Sequence[str] | None = None) -> RhythmConfig:
    """Parse a :class:`RhythmConfig` from ``[recipe.yaml] [--key value ...]`` (TrlParser conventions)."""
    from trl import TrlParser

    from rlattn.utils import normalise_argv

    argv = normalise_argv(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser((RhythmConfig,)).parse_args_and_config(argv)
    return config


# ---------------------------------------------------------------------------------------------
# Peaks and the three couplings (pure functions on one response; 1-D arrays of length T)
# ---------------------------------------------------------------------------------------------
def peak_eligible(x) -> np.ndarray:
    """Positions where a peak can occur: 1..T−2 with finite x[t−1], x[t], x[t+1]. bool [T]."""
    x = np.asarray(x, dtype=np.float64)  # [T]
    ok = np.zeros(len(x), dtype=bool)
    if len(x) >= 3:
        f = np.isfinite(x)
        ok[1:-1] = f[:-2] & f[1:-1] & f[2:]
    return ok


def find_peaks(x, min_quantile: float = 0.0) -> np.ndarray:
    """Strict local maxima of ``x`` [T] (see the module docstring): bool [T].

    t is a peak when x[t] > x[t−1] and the first later value different from x[t] is smaller, all
    values involved finite; a plateau is marked once, at its left edge. With ``min_quantile`` > 0
    a peak must also reach that quantile (linear interpolation) of the finite values.
    """
    x = np.asarray(x, dtype=np.float64)  # [T]
    T = len(x)
    finite = np.isfinite(x)
    peaks = np.zeros(T, dtype=bool)
    for t in range(1, T - 1):
        if not (finite[t - 1] and finite[t]) or not x[t] > x[t - 1]:
            continue
        u = t + 1
        while u < T and finite[u] and x[u] == x[t]:
            u += 1
        peaks[t] = u < T and bool(finite[u]) and x[u] < x[t]
    if min_quantile > 0 and finite.any():
        peaks &= x >= np.quantile(x[finite], min_quantile)
    return peaks


def _at_or_after(marks: np.ndarray, k: int) -> np.ndarray:
    """cond[s] = some marks[p] with 0 <= s − p <= k. bool [T]."""
    c = np.concatenate([[0], np.cumsum(marks.astype(np.int64))])  # [T+1]
    s = np.arange(len(marks))
    return (c[s + 1] - c[np.maximum(s - k, 0)]) > 0


def _near(marks: np.ndarray, w: int) -> np.ndarray:
    """cond[s] = some marks[p] with |s − p| <= w. bool [T]."""
    c = np.concatenate([[0], np.cumsum(marks.astype(np.int64))])  # [T+1]
    s = np.arange(len(marks))
    return (c[np.minimum(s + w + 1, len(marks))] - c[np.maximum(s - w, 0)]) > 0


@dataclass(frozen=True)
class Coupling:
    """One response's share of a coupling statistic.

    observed = ``value`` / ``peaks`` (the statistic summed over the first metric's peaks);
    random = ``expected`` / ``peaks`` (its exact expectation with those peaks shuffled over the
    ``eligible`` positions). Pooled over responses: Σ value / Σ peaks vs Σ expected / Σ peaks.
    """

    value: float
    expected: float
    peaks: int
    eligible: int

    @property
    def observed(self) -> float:
        return self.value / self.peaks if self.peaks else math.nan

    @property
    def random(self) -> float:
        return self.expected / self.peaks if self.peaks else math.nan


def _coupling(first_peaks: np.ndarray, eligible: np.ndarray, stat: np.ndarray) -> Coupling:
    """Statistic ``stat`` [T] at the first metric's peaks vs its mean over the eligible positions."""
    n_el = int(eligible.sum())
    n = int(first_peaks.sum())
    stat = np.asarray(stat, dtype=np.float64)
    value = float(stat[first_peaks].sum()) if n else 0.0
    mean_el = float(stat[eligible].mean()) if n_el else math.nan
    return Coupling(value=value, expected=n * mean_el if n else 0.0, peaks=n, eligible=n_el)


def entropy_at_peaks(waad, entropy, min_quantile: float = 0.0) -> Coupling:
    """Coupling 1: entropy at WAAD peaks vs at WAAD peaks shuffled within the response."""
    waad = np.asarray(waad, dtype=np.float64)  # [T]
    entropy = np.asarray(entropy, dtype=np.float64)  # [T]
    eligible = peak_eligible(waad) & np.isfinite(entropy)
    return _coupling(find_peaks(waad, min_quantile) & eligible, eligible, np.nan_to_num(entropy))


def fai_follows_waad(waad, fai, k: int = 1, min_quantile: float = 0.0) -> Coupling:
    """Coupling 3: share of FAI peaks s with a WAAD peak p, 0 <= s − p <= k, vs FAI peaks shuffled."""
    cond = _at_or_after(find_peaks(waad, min_quantile), k)  # [T]
    eligible = peak_eligible(fai)
    return _coupling(find_peaks(fai, min_quantile) & eligible, eligible, cond)


def receiver_global_cooccurrence(receiver_fai, global_fai, window: int = 0, min_quantile: float = 0.0) -> Coupling:
    """Coupling 2: share of receiver-FAI peaks within ``window`` of a global-FAI peak vs shuffled."""
    cond = _near(find_peaks(global_fai, min_quantile), window)  # [T]
    eligible = peak_eligible(receiver_fai)
    return _coupling(find_peaks(receiver_fai, min_quantile) & eligible, eligible, cond)


def summarize_coupling(parts: Sequence[Coupling], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Pooled observed, random and lift over responses, with percentile bootstrap intervals
    (resampling responses with replacement), and the per-response lifts (value / expected − 1)."""
    value = np.array([p.value for p in parts], dtype=np.float64)  # [P]
    expected = np.array([p.expected for p in parts], dtype=np.float64)  # [P]
    peaks = np.array([p.peaks for p in parts], dtype=np.float64)  # [P]
    eligible = np.array([p.eligible for p in parts], dtype=np.float64)  # [P]
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = value.sum() / peaks.sum()
        rnd = expected.sum() / peaks.sum()
        per_lift = np.where((peaks > 0) & (expected > 0), value / np.where(expected > 0, expected, 1) - 1, np.nan)
    out = {"observed": float(obs), "random": float(rnd), "lift": float(obs / rnd - 1) if rnd else math.nan,
           "peaks": int(peaks.sum()), "eligible": int(eligible.sum()), "responses": len(parts),
           "responses_with_peaks": int((peaks > 0).sum()), "per_response_lift": [None if np.isnan(v) else float(v) for v in per_lift]}
    if len(parts) and peaks.sum() > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(parts), size=(n_boot, len(parts)))  # [n_boot, P]
        with np.errstate(invalid="ignore", divide="ignore"):
            nb = peaks[idx].sum(1)
            ob = value[idx].sum(1) / nb
            rb = expected[idx].sum(1) / nb
            lb = ob / rb - 1
        lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
        for name, arr in (("observed", ob), ("random", rb), ("lift", lb)):
            arr = arr[np.isfinite(arr)]
            out[f"{name}_ci"] = [float(np.quantile(arr, lo)), float(np.quantile(arr, hi))] if len(arr) else [math.nan, math.nan]
    return out


def excess_kurtosis(x) -> float:
    """Excess kurtosis m4 / m2² − 3 of the finite values (population moments, as scipy's default)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan
    d = x - x.mean()
    m2 = float((d ** 2).mean())
    return float((d ** 4).mean()) / m2 ** 2 - 3.0 if m2 > 0 else math.nan


_STOPWORDS = frozenset(
    "a an the and or but of to in on at for by with from as is are was were be been being it its this that these those "
    "so then than there their they them he she his her we our you your i me my do does did has have had will would can "
    "could should if not no".split()
)


def content_words(text: str) -> set[str]:
    """[ours] Content words of a text: lower-cased words and numbers, minus a short stop-word list."""
    return {w for w in re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower()) if w not in _STOPWORDS}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; 1 when both are empty."""
    return len(a & b) / len(a | b) if (a or b) else 1.0


# ---------------------------------------------------------------------------------------------
# Signals of one response: WAAD, global FAI, per-head FAI, entropy (one early-exit pass + logits)
# ---------------------------------------------------------------------------------------------
@dataclass
class ResponseSignals:
    """Per-token signals of one response (numpy, response positions only)."""

    waad: np.ndarray  # [T]
    fai: np.ndarray  # [T] global-head FAI (the engine's); NaN where its horizon is empty
    entropy: np.ndarray  # [T] nats
    head_fai: np.ndarray  # [nL, H, T] each head's own FAI
    kurtosis: np.ndarray  # [nL, H] excess kurtosis of head_fai over the response
    global_heads: np.ndarray  # bool [nL, H]
    local_heads: np.ndarray  # bool [nL, H]
    layers: list[int]
    candidates: np.ndarray | None = None  # [T, m] highest-logit token ids at each position (perturbation)
    receiver_heads: np.ndarray | None = None  # bool [nL, H], set by select_receiver_heads
    receiver_fai: np.ndarray | None = None  # [T]


class _HeadColumns:
    """Capture observer: per-head FAI column sums Σ_{t∈R, H_lo≤t−s≤H_hi} A[t,s] of each layer.

    The softmax is recomputed in fp32 from the captured post-RoPE q/k (as the engine does), in
    chunks of C query rows, so the peak memory is one [B, H, C, N] block, never an N×N map per head.
    """

    def __init__(self, key_mask: torch.Tensor, resp_mask: torch.Tensor, horizon: tuple[int, int], memory_budget_mb: float):
        self.key_mask = key_mask.bool()  # [B, N]
        self.resp = resp_mask.bool()  # [B, N]
        self.lo, self.hi = horizon
        self.budget = memory_budget_mb
        self.sums: dict[int, torch.Tensor] = {}  # layer -> [B, H, N]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, scaling: float) -> None:
        with torch.autocast(device_type=q.device.type, enabled=False):
            self.sums[layer] = self._reduce(q.detach().float(), k.detach().float(), scaling)

    def _reduce(self, q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
        B, H, N, D = q.shape
        k = k.repeat_interleave(H // k.shape[1], dim=1)  # [B, H, N, D]; query head h reads kv head h // G
        dev = q.device
        key_mask, resp = self.key_mask.to(dev), self.resp.to(dev)
        C = int(max(1, min(N, self.budget * 2**20 // (3 * B * H * N * 4))))
        sums = torch.zeros(B, H, N, device=dev)
        first = int(resp.any(0).nonzero()[0])  # rows before any response never count
        for t0 in range(first, N, C):
            t1 = min(t0 + C, N)
            rows = torch.arange(t0, t1, device=dev)  # [C]
            scores = torch.matmul(q[:, :, t0:t1], k[:, :, :t1].transpose(-1, -2)).mul_(scaling)  # [B, H, C, t1]
            gap = rows[:, None] - torch.arange(t1, device=dev)[None, :]  # [C, t1]
            valid = (gap >= 0)[None] & key_mask[:, None, :t1]  # [B, C, t1]
            scores.masked_fill_(~valid[:, None], float("-inf"))
            probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # [B, H, C, t1]; NaN rows = no real key
            del scores
            take = ((gap >= self.lo) & (gap <= self.hi))[None] & resp[:, t0:t1, None]  # [B, C, t1]
            sums[:, :, :t1] += (probs * take[:, None]).sum(2)  # [B, H, t1]
        return sums


@torch.no_grad()
def measure_response(model, prompt_ids: Sequence[int], completion_ids: Sequence[int], config: RhythmConfig,
                     n_candidates: int = 0) -> ResponseSignals:
    """WAAD, global FAI, per-head FAI, head kurtosis and entropies of one prompt ⊕ response.

    ``n_candidates`` > 0 also keeps that many highest-logit token ids per position (perturbation).
    """
    from rlattn.credit import compute_attention_stats
    from rlattn.credit.attention_stats import horizon_counts

    P, T = len(prompt_ids), len(completion_ids)
    if T < 1:
        raise ValueError("measure_response: the response is empty")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)  # [1, N]
    N = ids.shape[1]
    am = torch.ones_like(ids)  # [1, N]
    rm = torch.zeros_like(ids, dtype=torch.bool)  # [1, N]
    rm[:, P:] = True
    scfg = config.stats_config(N)
    heads = _HeadColumns(am, rm, scfg.fai_horizon, scfg.memory_budget_mb)
    stats = compute_attention_stats(model, ids, am, rm, scfg, observer=heads)
    counts = horizon_counts(rm, *scfg.fai_horizon)[0, P:]  # [T]
    head_sums = torch.stack([heads.sums[l][0, :, P:] for l in stats.layers])  # [nL, H, T]
    head_fai = torch.where(counts > 0, head_sums / counts.clamp(min=1), float("nan"))  # [nL, H, T]
    # entropies of the distributions that produced the response tokens: logits rows P-1 .. N-2
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, attention_mask=am, use_cache=False, logits_to_keep=T + 1).logits[0, :T].float()  # [T, V]
    finally:
        model.train(was_training)
    logp = torch.log_softmax(logits, dim=-1)  # [T, V]
    entropy = -(logp.exp() * logp).sum(-1)  # [T]
    candidates = logits.topk(min(n_candidates, logits.shape[-1]), dim=-1).indices.cpu().numpy() if n_candidates else None  # [T, m]
    head_np = head_fai.cpu().numpy()
    return ResponseSignals(
        waad=stats.waad[0, P:].cpu().numpy().astype(np.float64),
        fai=stats.fai[0, P:].cpu().numpy().astype(np.float64),
        entropy=entropy.cpu().numpy().astype(np.float64),
        head_fai=head_np.astype(np.float64),
        kurtosis=np.array([[excess_kurtosis(v) for v in layer] for layer in head_np]),
        global_heads=stats.global_heads[0].cpu().numpy(),
        local_heads=stats.local_heads[0].cpu().numpy(),
        layers=list(stats.layers),
        candidates=candidates,
    )


def select_receiver_heads(signals: Sequence[ResponseSignals], quantile: float = 0.1, selection: str = "dataset") -> np.ndarray | None:
    """Mark the ⌈quantile·n⌉ heads with the largest FAI kurtosis as receiver heads; set each
    response's ``receiver_heads`` and ``receiver_fai`` (mean head FAI over them). Ties go to the
    lower layer, then the lower head. Returns the shared mask [nL, H] for ``dataset``, else None."""
    if selection not in RECEIVER_SELECTIONS:
        raise ValueError(f"receiver_selection={selection!r} is not one of {', '.join(RECEIVER_SELECTIONS)}")

    def top(kurt: np.ndarray) -> np.ndarray:
        flat = np.where(np.isfinite(kurt), kurt, -np.inf).ravel()  # [nL*H]
        k = min(flat.size, math.ceil(quantile * flat.size - 1e-9))
        order = np.argsort(-flat, kind="stable")[:k]
        mask = np.zeros(flat.size, dtype=bool)
        mask[order] = True
        return mask.reshape(kurt.shape)

    shared = None
    if selection == "dataset" and signals:
        with np.errstate(invalid="ignore"):
            shared = top(np.nanmean(np.stack([s.kurtosis for s in signals]), axis=0))
    for s in signals:
        s.receiver_heads = shared if shared is not None else top(s.kurtosis)
        s.receiver_fai = s.head_fai[s.receiver_heads].mean(0)  # [T]
    return shared


# ---------------------------------------------------------------------------------------------
# Responses: generated (the paper's protocol) or read from rollout records
# ---------------------------------------------------------------------------------------------
@dataclass
class Response:
    """One prompt ⊕ response to analyse."""

    id: str
    prompt: object  # messages or text, for the records
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool  # ended with EOS (False: truncated at max_new_tokens, or unknown)


@torch.no_grad()
def _generate(model, tokenizer, rows: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
              eos: list[int], seed: int | None = None) -> list[tuple[list[int], bool]]:
    """Continue each row of token ids (left-padded batch): (new ids up to and including the first
    EOS, ended with EOS). Greedy when ``temperature`` is 0; top_k always disabled."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [B, P]
    mask = torch.zeros_like(ids)  # [B, P]
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    sampling = ({"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if temperature > 0
                else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         eos_token_id=eos, pad_token_id=pad, **sampling)
    results = []
    for row in out[:, width:].tolist():  # [B, <= max_new_tokens]
        end = next((j for j, t in enumerate(row) if t in eos), None)
        results.append((row if end is None else row[: end + 1], end is not None))
    return results


def _encode(tokenizer, prompt) -> list[int]:
    from rlattn.eval.generate import encode_prompts

    (text,) = encode_prompts(tokenizer, [prompt])
    return [int(i) for i in tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]]


def generate_responses(model, tokenizer, config: RhythmConfig, log=print) -> list[Response]:
    """Answer the first ``limit`` problems of ``dataset`` once each (the paper: one response each)."""
    from rlattn.data import load_dataset
    from rlattn.eval.generate import seed_from
    from rlattn.models import eos_token_ids

    data = load_dataset(config.dataset, template=config.prompt_template, limit=config.limit, seed=config.dataset_seed)
    eos = eos_token_ids(model, tokenizer)
    out: list[Response] = []
    for b0 in range(0, len(data), config.batch_size):
        rows = [data[i] for i in range(b0, min(b0 + config.batch_size, len(data)))]
        prompt_ids = [_encode(tokenizer, r["prompt"]) for r in rows]
        gens = _generate(model, tokenizer, prompt_ids, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                         top_p=config.top_p, eos=eos, seed=seed_from(config.seed, config.model, config.dataset, b0))
        for r, p, (c, finished) in zip(rows, prompt_ids, gens):
            out.append(Response(id=str(r.get("id", len(out))), prompt=r["prompt"], prompt_ids=p, completion_ids=c, finished=finished))
        log(f"rlattn.rhythm: generated {len(out)}/{len(data)} responses")
    return out


def responses_from_records(path: str, tokenizer, limit: int | None) -> list[Response]:
    """Responses of saved rollout records (``rlattn.rollouts.load_records``): the prompt is
    re-encoded (chat messages stored as JSON go through the chat template), the ids are kept."""
    from rlattn.rollouts import load_records

    out = []
    for i, rec in enumerate(load_records(path)[:limit]):
        if not rec.get("completion_ids") or rec.get("prompt") is None:
            raise ValueError(f"rollout record {i} of {path} has no {'completion_ids' if not rec.get('completion_ids') else 'prompt'}; "
                             "it needs prompt and completion_ids (written by the trainer with credit_log_samples > 0)")
        prompt = rec["prompt"]
        if isinstance(prompt, str) and prompt.lstrip().startswith("["):
            try:
                prompt = json.loads(prompt)
            except json.JSONDecodeError:
                pass
        ids = [int(t) for t in rec["completion_ids"]]
        finished = rec.get("finished")
        out.append(Response(id=str(rec.get("id", i)), prompt=prompt, prompt_ids=_encode(tokenizer, prompt), completion_ids=ids,
                            finished=bool(finished) if finished is not None else False))
    return out


# ---------------------------------------------------------------------------------------------
# Perturbation test (Table 1)
# ---------------------------------------------------------------------------------------------
def perturbation_trial(model, tokenizer, response: Response, signals: ResponseSignals, config: RhythmConfig, eos: list[int]) -> dict | None:
    """Top- vs bottom-FAI perturbations of one response: mean continuation Jaccard of each group.

    None when the response has fewer than 2·``perturb_positions`` perturbable positions.
    """
    T = len(response.completion_ids)
    fai = signals.fai
    pool = [t for t in range(max(0, T - 1 - config.perturb_skip_last)) if np.isfinite(fai[t])]
    n = config.perturb_positions
    if len(pool) < 2 * n or signals.candidates is None:
        return None
    order = sorted(pool, key=lambda t: (fai[t], t))
    groups = {"top": order[-n:], "bottom": order[:n]}
    rows, keys = [], []
    for group, positions in groups.items():
        for t in positions:
            orig = response.completion_ids[t]
            alts = [int(v) for v in signals.candidates[t] if int(v) != orig][: config.perturb_candidates]
            for v in [orig] + alts:
                rows.append(response.prompt_ids + response.completion_ids[:t] + [v])
                keys.append((group, t, v == orig))
    conts = []
    for b0 in range(0, len(rows), config.batch_size):
        conts += _generate(model, tokenizer, rows[b0: b0 + config.batch_size], max_new_tokens=config.perturb_horizon,
                           temperature=0.0, top_p=1.0, eos=eos)
    words = [content_words(tokenizer.decode([t for t in c if t not in eos], skip_special_tokens=True)) for c, _ in conts]
    scores: dict[str, list[float]] = {"top": [], "bottom": []}
    for group, positions in groups.items():
        for t in positions:
            ref = next(w for (g, u, o), w in zip(keys, words) if (g, u, o) == (group, t, True))
            alt = [jaccard(ref, w) for (g, u, o), w in zip(keys, words) if g == group and u == t and not o]
            if alt:
                scores[group].append(float(np.mean(alt)))
    if not scores["top"] or not scores["bottom"]:
        return None
    return {"top": float(np.mean(scores["top"])), "bottom": float(np.mean(scores["bottom"])),
            "top_positions": groups["top"], "bottom_positions": groups["bottom"]}


def summarize_perturbation(trials: Sequence[dict], n_boot: int, confidence: float, seed: int = 0) -> dict:
    top = np.array([t["top"] for t in trials])  # [P]
    bottom = np.array([t["bottom"] for t in trials])  # [P]
    out = {"trials": len(trials)}
    if not len(trials):
        return out
    less = (top < bottom).astype(np.float64)
    out.update(top=float(top.mean()), bottom=float(bottom.mean()), pr_top_lt_bottom=float(less.mean()))
    idx = np.random.default_rng(seed).integers(0, len(trials), size=(n_boot, len(trials)))
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    for name, arr in (("top", top), ("bottom", bottom), ("pr_top_lt_bottom", less)):
        b = arr[idx].mean(1)
        out[f"{name}_ci"] = [float(np.quantile(b, lo)), float(np.quantile(b, hi))]
    return out


# ---------------------------------------------------------------------------------------------
# The run: responses -> signals -> couplings -> report
# ---------------------------------------------------------------------------------------------
@dataclass
class RhythmReport:
    """What :func:`analyze_rhythm` measured (``summary`` is report.json) and where it wrote it."""

    summary: dict
    files: dict[str, str]

    def headline(self) -> str:
        """One line per coupling (random -> observed, lift) and where the report is."""
        lines = [f"rlattn: {name}: random {c['random']:.4f} -> observed {c['observed']:.4f} (lift {100 * c['lift']:+.1f} %)"
                 for name, c in self.summary["couplings"].items()]
        return "\n".join(lines + [f"rlattn: report in {self.files['report_md']} (json: {self.files['report_json']})"])


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _couplings(sig: ResponseSignals, cfg: RhythmConfig) -> dict[str, Coupling]:
    q = cfg.peak_min_quantile
    return {
        "entropy_at_waad_peaks": entropy_at_peaks(sig.waad, sig.entropy, q),
        "receiver_global_cooccurrence": receiver_global_cooccurrence(sig.receiver_fai, sig.fai, cfg.cooccur_window, q),
        "fai_follows_waad": fai_follows_waad(sig.waad, sig.fai, cfg.follow_window, q),
    }


def analyze_rhythm(config: RhythmConfig, log=print) -> RhythmReport:
    """Generate (or read) responses, measure the couplings, write report.md/json, responses.jsonl, plots."""
    threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        return _analyze(config, log)
    finally:
        torch.set_num_threads(threads)


def _analyze(cfg: RhythmConfig, log) -> RhythmReport:
    from rlattn.eval.loading import load_eval_model
    from rlattn.models import eos_token_ids
    from rlattn.rollouts import write_records

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # ---- model ----
    loaded = load_eval_model(cfg.model, dtype=cfg.dtype, device=_resolve_device(cfg.device), attn_implementation="sdpa")
    model, tok = loaded.model, loaded.tokenizer
    eos = eos_token_ids(model, tok)
    timings["load_s"] = time.perf_counter() - t0
    # ---- responses ----
    t = time.perf_counter()
    responses = responses_from_records(cfg.records, tok, cfg.limit) if cfg.records else generate_responses(model, tok, cfg, log)
    if not responses:
        raise ValueError(f"no responses to analyse (dataset={cfg.dataset!r}, records={cfg.records!r}, limit={cfg.limit!r})")
    if cfg.example_index is not None and cfg.example_index >= len(responses):  # fail before the costly passes
        raise ValueError(f"example_index={cfg.example_index} is out of range: there are {len(responses)} responses (0..{len(responses) - 1})")
    timings["generate_s"] = time.perf_counter() - t
    # ---- signals ----
    t = time.perf_counter()
    n_cand = cfg.perturb_candidates + 1 if cfg.perturb else 0
    signals = [measure_response(model, r.prompt_ids, r.completion_ids, cfg, n_candidates=n_cand) for r in responses]
    shared = select_receiver_heads(signals, cfg.receiver_quantile, cfg.receiver_selection)
    timings["signals_s"] = time.perf_counter() - t
    # ---- couplings ----
    per = [_couplings(s, cfg) for s in signals]
    couplings = {}
    for i, name in enumerate(COUPLINGS):
        couplings[name] = summarize_coupling([p[name] for p in per], cfg.bootstrap, cfg.confidence, seed=cfg.seed + i)
        couplings[name].update(statistic=COUPLINGS[name][0], baseline=COUPLINGS[name][1], paper=PAPER_TABLES[name])
    # ---- perturbation (optional) ----
    perturbation = None
    if cfg.perturb:
        t = time.perf_counter()
        trials = []
        for i, (r, s) in enumerate(zip(responses, signals)):
            trial = perturbation_trial(model, tok, r, s, cfg, eos)
            if trial is not None:
                trials.append(dict(trial, response=i))
            log(f"rlattn.rhythm: perturbation {i + 1}/{len(responses)}")
        perturbation = summarize_perturbation(trials, cfg.bootstrap, cfg.confidence, seed=cfg.seed)
        perturbation.update(paper=PAPER_TABLES["perturbation"], per_response=trials)
        timings["perturb_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    # ---- report ----
    overlap = [float((s.receiver_heads & s.global_heads).sum() / max(1, s.receiver_heads.sum())) for s in signals]
    density = {name: _peak_density(signals, attr, cfg.peak_min_quantile) for name, attr in (("waad", "waad"), ("global_fai", "fai"), ("receiver_fai", "receiver_fai"))}
    example = _pick_example(responses, signals, cfg)
    summary = {
        "model": loaded.info(),
        "config": asdict(cfg),
        "responses": len(responses),
        "response_tokens": int(sum(len(r.completion_ids) for r in responses)),
        "finished": int(sum(r.finished for r in responses)),
        "layers": signals[0].layers,
        "heads_per_layer": int(signals[0].global_heads.shape[1]),
        "receiver_heads": [[signals[0].layers[l], int(h)] for l, h in zip(*np.nonzero(shared))] if shared is not None else None,
        "receiver_global_head_overlap": float(np.mean(overlap)),
        "peak_density": density,
        "couplings": couplings,
        "perturbation": perturbation,
        "example_response": example,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "command": " ".join(["python", "scripts/analyze_rhythm.py"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("analyze_rhythm.py") else None,
    }
    files = {"report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md"),
             "responses": str(out_dir / "responses.jsonl")}
    write_records(files["responses"], [_record(r, s, tok) for r, s in zip(responses, signals)])
    if cfg.plots:
        files["plot_lifts"] = str(_plot_lifts(couplings, out_dir / "plots" / "lifts.png"))
        files["plot_example"] = str(_plot_example(responses[example], signals[example], tok, cfg, out_dir / "plots" / "example.png"))
    summary["files"] = files
    Path(files["report_json"]).write_text(json.dumps(_clean(summary), indent=2, ensure_ascii=False))
    Path(files["report_md"]).write_text(render_markdown(summary))
    return RhythmReport(summary=summary, files=files)


def _peak_density(signals, attr, min_quantile: float) -> float:
    peaks = sum(int((find_peaks(getattr(s, attr), min_quantile) & peak_eligible(getattr(s, attr))).sum()) for s in signals)
    eligible = sum(int(peak_eligible(getattr(s, attr)).sum()) for s in signals)
    return peaks / eligible if eligible else math.nan


def _coupled_positions(sig: ResponseSignals, cfg: RhythmConfig) -> np.ndarray:
    """FAI peaks at or ≤ k after a WAAD peak. bool [T]."""
    q = cfg.peak_min_quantile
    return find_peaks(sig.fai, q) & peak_eligible(sig.fai) & _at_or_after(find_peaks(sig.waad, q), cfg.follow_window)


def _pick_example(responses, signals, cfg) -> int:
    if cfg.example_index is not None:
        return cfg.example_index
    ok = [i for i, (r, s) in enumerate(zip(responses, signals)) if r.finished and _coupled_positions(s, cfg).any()]
    pool = ok or list(range(len(responses)))
    return min(pool, key=lambda i: (len(responses[i].completion_ids), i))


def _record(r: Response, s: ResponseSignals, tok) -> dict:
    rnd = lambda x: [None if not np.isfinite(v) else round(float(v), 6) for v in x]  # noqa: E731
    return {
        "id": r.id,
        "prompt": r.prompt if isinstance(r.prompt, str) else json.dumps(r.prompt, ensure_ascii=False),
        "completion": tok.decode(r.completion_ids, skip_special_tokens=False),
        "completion_ids": r.completion_ids,
        "tokens": tok.convert_ids_to_tokens(r.completion_ids),
        "finished": r.finished,
        "waad": rnd(s.waad), "fai": rnd(s.fai), "receiver_fai": rnd(s.receiver_fai), "entropy": rnd(s.entropy),
    }


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def _fmt(v, pct: bool) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.2f} %" if pct else f"{v:.4f}"


def _ci(c: dict, key: str, pct: bool) -> str:
    lo, hi = c.get(f"{key}_ci", [None, None])
    return f"[{_fmt(lo, pct)}, {_fmt(hi, pct)}]"


def render_markdown(summary: dict) -> str:
    """report.md: the couplings table (ours beside the paper's), settings, the [ours] choices."""
    cfg = summary["config"]
    conf = int(round(100 * cfg["confidence"]))
    horizon = cfg["fai_horizon"] or "[1, end of response]"
    lines = [
        "# Preplan-and-anchor rhythm (arXiv 2510.13554, §4)",
        "",
        f"Model `{summary['model']['spec']}` ({summary['model']['kind']}), {summary['responses']} responses "
        f"({summary['response_tokens']} response tokens, {summary['finished']} ended with EOS), "
        + (f"records `{cfg['records']}`." if cfg["records"] else
           f"`{cfg['dataset']}`, template `{cfg['prompt_template']}`, temperature {cfg['temperature']}, top_p {cfg['top_p']}, "
           f"max_new_tokens {cfg['max_new_tokens']}, seed {cfg['seed']}."),
        f"Layers {summary['layers']} ({summary['heads_per_layer']} heads each); WAAD window {cfg['attn_window']}; FAI horizon {horizon}.",
        "",
        f"Pooled over responses; {conf} % percentile-bootstrap intervals over problems ({cfg['bootstrap']} resamples). "
        "Random = the exact expectation with the first metric's peaks shuffled within each response. "
        "Paper: Qwen3-4B-Base, 70 GSM8K problems (v2 Table 2).",
        "",
        "| coupling | paper random → observed (lift) | ours random [CI] | ours observed [CI] | ours lift [CI] | peaks |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in summary["couplings"].items():
        pct = name != "entropy_at_waad_peaks"
        p = c["paper"]
        lines.append(
            f"| {c['statistic']} | {_fmt(p['random'], pct)} → {_fmt(p['observed'], pct)} ({100 * p['lift']:+.2f} %) "
            f"| {_fmt(c['random'], pct)} {_ci(c, 'random', pct)} | {_fmt(c['observed'], pct)} {_ci(c, 'observed', pct)} "
            f"| {100 * c['lift']:+.2f} % [{100 * c['lift_ci'][0]:+.2f} %, {100 * c['lift_ci'][1]:+.2f} %] | {c['peaks']} |"
            if c.get("lift_ci") and math.isfinite(c["lift"]) else f"| {c['statistic']} | | n/a | n/a | n/a | {c['peaks']} |"
        )
    lines += ["", "Random baselines (exact expectations, no sampling):"]
    lines += [f"- {c['statistic']}: {c['baseline']};" for c in summary["couplings"].values()]
    pert = summary.get("perturbation")
    if pert and pert.get("trials"):
        lines += [
            "",
            f"Perturbation (Table 1), {pert['trials']} trials (responses): mean Jaccard of continuations, top-{cfg['perturb_positions']} "
            f"FAI positions {_fmt(pert['top'], False)} {_ci(pert, 'top', False)} vs bottom-{cfg['perturb_positions']} "
            f"{_fmt(pert['bottom'], False)} {_ci(pert, 'bottom', False)}; top < bottom in {_fmt(pert['pr_top_lt_bottom'], True)} "
            f"{_ci(pert, 'pr_top_lt_bottom', True)} of trials (paper: 0.534 vs 0.631, 87.14 %).",
        ]
    dens = summary["peak_density"]
    rh = summary["receiver_heads"]
    lines += [
        "",
        f"Peak density (peaks / eligible positions): WAAD {_fmt(dens['waad'], True)}, global FAI {_fmt(dens['global_fai'], True)}, "
        f"receiver FAI {_fmt(dens['receiver_fai'], True)}.",
        f"Receiver heads ({cfg['receiver_selection']} selection, top {cfg['receiver_quantile']:g} by FAI kurtosis): "
        + (", ".join(f"L{l}H{h}" for l, h in rh) if rh else "per response")
        + f"; on average {_fmt(summary['receiver_global_head_overlap'], True)} of them are also global heads.",
        "",
        "## Choices the paper leaves open ([ours], all options)",
        "",
        f"- peak: strict local maximum (plateau once, at its left edge; never the first/last token), "
        f"min quantile {cfg['peak_min_quantile']} (`peak_min_quantile`);",
        f"- 'at or just after': 0 ≤ s − p ≤ {cfg['follow_window']} (`follow_window`); co-occurrence within "
        f"{cfg['cooccur_window']} positions (`cooccur_window`);",
        f"- receiver heads: among the selected layers, ⌈{cfg['receiver_quantile']:g}·n⌉ heads by excess kurtosis of their own FAI, "
        f"`{cfg['receiver_selection']}` selection (`receiver_quantile`, `receiver_selection`);",
        "- entropy: nats, the model's temperature-1 distribution at the step that produced the token;",
        "- baselines: exact expectations over the eligible (interior, finite) positions, not Monte Carlo.",
        "",
        f"Time: {summary['timings_s']}.",
    ]
    if summary.get("command"):
        lines += ["", f"Command: `{summary['command']}`"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_lifts(couplings: dict, path: Path) -> Path:
    """Per-response lift (observed / random − 1) of each coupling: points, box, pooled lift (◆)."""
    plt = _pyplot()
    names = list(couplings)
    fig, ax = plt.subplots(figsize=(8.5, 4.2), constrained_layout=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        v = np.array([x for x in couplings[name]["per_response_lift"] if x is not None])
        if len(v):
            ax.boxplot([v], positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(v)), v, s=10, alpha=0.5, color="#2563eb")
        ax.scatter([i], [couplings[name]["lift"]], marker="D", s=50, color="#dc2626", zorder=4,
                   label="pooled lift" if i == 0 else None)
        ax.scatter([i], [couplings[name]["paper"]["lift"]], marker="*", s=90, color="#16a34a", zorder=4,
                   label="paper (Qwen3-4B-Base)" if i == 0 else None)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(["entropy at\nWAAD peaks", "receiver & global\nFAI peaks", "FAI peak at/after\nWAAD peak"])
    ax.set_ylabel("lift = observed / random − 1")
    ax.set_title("Per-response lift over the shuffled-peaks baseline", fontsize=11)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_example(r: Response, s: ResponseSignals, tok, cfg: RhythmConfig, path: Path) -> Path:
    """One response: WAAD (peaks ▲), global and receiver FAI (peaks ●), entropy; coupled FAI peaks
    (at or ≤ k after a WAAD peak) marked ★ and by a shaded band in every panel."""
    plt = _pyplot()
    T = len(s.waad)
    x = np.arange(T)
    q = cfg.peak_min_quantile
    wp, fp = find_peaks(s.waad, q), find_peaks(s.fai, q) & peak_eligible(s.fai)
    coupled = _coupled_positions(s, cfg)
    fig, axes = plt.subplots(3, 1, figsize=(min(24.0, max(9.0, T / 22)), 7.2), sharex=True, constrained_layout=True)
    ax_w, ax_f, ax_e = axes
    ax_w.plot(x, s.waad, color="#1d4ed8", lw=1.1, label="WAAD")
    ax_w.scatter(x[wp], s.waad[wp], marker="^", s=22, color="#1d4ed8", label="WAAD peak")
    ax_f.plot(x, s.fai, color="#c2410c", lw=1.1, label="FAI (global heads)")
    ax_f.scatter(x[fp], s.fai[fp], marker="o", s=18, color="#c2410c", label="FAI peak")
    ax_f.scatter(x[coupled], s.fai[coupled], marker="*", s=90, color="#dc2626", zorder=4, label=f"FAI peak ≤ {cfg.follow_window} after a WAAD peak")
    ax_r = ax_f.twinx()
    ax_r.plot(x, s.receiver_fai, color="#7c3aed", lw=0.9, ls="--", label="FAI (receiver heads)")
    ax_r.set_ylabel("receiver FAI", color="#7c3aed")
    ax_e.plot(x, s.entropy, color="#15803d", lw=1.0, label="entropy (nats)")
    ax_e.scatter(x[wp], s.entropy[wp], marker="^", s=18, color="#1d4ed8", label="at WAAD peaks")
    for ax in axes:
        for t in x[coupled]:
            ax.axvspan(t - cfg.follow_window - 0.5, t + 0.5, color="#fca5a5", alpha=0.25, lw=0)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if ax is ax_f:  # the receiver curve lives on the twin axis
            more = ax_r.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        # above the panel, so no curve is hidden behind it
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, fontsize=8, frameon=False)
    ax_w.set_ylabel("WAAD")
    ax_f.set_ylabel("FAI")
    ax_e.set_ylabel("entropy")
    ax_e.set_xlabel("response position")
    ax_e.set_xlim(-0.5, T - 0.5)
    if T <= 160:
        ax_e.set_xticks(x)
        labels = ["".join(ch if ch.isprintable() else "·" for ch in tok.decode([t]).replace("\n", "⏎")) for t in r.completion_ids]
        ax_e.set_xticklabels(labels, rotation=90, fontsize=6)
    fig.suptitle(f"response {r.id}: {T} tokens, {int(coupled.sum())} coupled FAI peaks (shaded)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
