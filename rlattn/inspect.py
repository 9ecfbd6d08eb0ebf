"""rlattn.inspect: see which response tokens get extra credit, and why.

The paper's insight is visual: WAAD's sawtooth marks phrasal chunks, FAI spikes mark anchor tokens,
and the preplan token sits just before its anchor. This module turns one trace (a prompt and a
response) into the numbers behind that picture, one row per response token, and renders them:

- a :class:`Trace` holds, per response token, the text, id, WAAD, Δ (= |WAAD[t] − WAAD[t+1]|),
  FAI, γ of every requested strategy, and the selected sets (preplan, anchor, dominated, intro) plus
  the intro→anchor links of the coupled strategy; per trace, the model, configs and head spans;
- traces come from a model (:func:`generate_trace` generates greedily; :func:`trace_from_model`
  takes given ids and runs ``compute_attention_stats``) or from saved rollout records
  (:func:`trace_from_record`, :func:`load_record_traces`: no model needed, the records hold WAAD,
  FAI and γ; other strategies' γ is recomputed from them);
- :func:`inspect_table` gives the rows as an :class:`InspectTable` (a list of dicts with a lazy
  ``to_pandas()``) for notebooks;
- :func:`render_html` writes one self-contained page (inline CSS/JS, data as embedded JSON, no
  network) that colours tokens by a chosen signal, marks the selected tokens, draws intro→anchor
  links, shows a tooltip per token and puts several traces or strategies side by side. Tokens are
  rendered in batches of a few hundred, yielding to the browser in between, so an 8K-token trace
  never blocks the page; the data is columnar with 4 significant digits, so an 8K-token trace with
  two strategies and its embedded WAAD/FAI plot stays under 2 MB (the tests hold it to that bound);
- :func:`plot_signals` (WAAD and FAI along the response, selected tokens marked) and
  :func:`plot_head_spans` (layers × heads span heatmap, local/global heads outlined) write PNGs;
- :func:`write_report` does all of it into a folder; ``scripts/inspect_credit.py`` is its command line.

Flags are always computed with ``select_tokens`` and γ with ``get_credit_fn``, the very functions
the trainer uses, so what the page marks is what training amplifies (for the same configs).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

__all__ = [
    "SIGNALS",
    "FLAG_KEYS",
    "Trace",
    "InspectTable",
    "build_trace",
    "trace_from_model",
    "generate_trace",
    "trace_from_record",
    "load_record_traces",
    "load_model",
    "inspect_table",
    "render_html",
    "write_html",
    "plot_signals",
    "plot_head_spans",
    "write_report",
]

SIGNALS = ("gamma", "waad", "delta", "fai")
FLAG_KEYS = ("preplan", "anchor", "dominated", "intro")
_RENDER_BATCH = 400  # tokens built per batch in the page, between yields to the browser


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass
class Trace:
    """One response with its per-token attention statistics, selections and credit.

    All per-token lists have the response length T. ``fai`` is NaN where its horizon is empty.
    ``links`` holds (intro, anchor) response positions, one per dominated anchor.
    """

    tokens: list[str]
    token_ids: list[int]
    waad: list[float]
    fai: list[float]
    delta: list[float]
    gammas: dict[str, list[float]]
    flags: dict[str, list[bool]]
    links: list[tuple[int, int]]
    label: str = "trace"
    prompt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    credit_config: dict[str, Any] = field(default_factory=dict)
    stats_config: dict[str, Any] | None = None
    layers: list[int] | None = None
    head_span: list[list[float]] | None = None  # [nL][H]
    local_heads: list[list[bool]] | None = None  # [nL][H]
    global_heads: list[list[bool]] | None = None  # [nL][H]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def strategies(self) -> list[str]:
        return list(self.gammas)

    def rows(self, trace_index: int = 0) -> list[dict[str, Any]]:
        """One dict per response token (see :func:`inspect_table` for the columns)."""
        intro_of = {a: i for i, a in self.links}
        anchor_of: dict[int, list[int]] = {}
        for i, a in self.links:
            anchor_of.setdefault(i, []).append(a)
        out = []
        for t in range(len(self.tokens)):
            row = {
                "trace": trace_index,
                "label": self.label,
                "model": self.meta.get("model"),
                "index": t,
                "token": self.tokens[t],
                "token_id": self.token_ids[t],
                "waad": self.waad[t],
                "delta": self.delta[t],
                "fai": self.fai[t],
            }
            for name, g in self.gammas.items():
                row[f"gamma_{name}"] = g[t]
            for key in FLAG_KEYS:
                row[key] = bool(self.flags[key][t])
            row["intro_of"] = intro_of.get(t)  # for a dominated anchor: its intro token
            row["anchors_of"] = anchor_of.get(t, [])  # for an intro token: the anchors it introduces
            out.append(row)
        return out

    def table(self) -> "InspectTable":
        return inspect_table([self])


class InspectTable:
    """Rows of :func:`inspect_table`: a list of dicts, with ``to_pandas()`` when pandas is installed."""

    def __init__(self, rows: list[dict[str, Any]], traces: list[Trace]):
        self.rows = rows
        self.traces = traces

    @property
    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for r in self.rows:
            cols.update(dict.fromkeys(r))
        return list(cols)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def column(self, name: str) -> list[Any]:
        if name not in self.columns:
            raise KeyError(f"InspectTable has no column {name!r}; columns: {', '.join(self.columns)}")
        return [r.get(name) for r in self.rows]

    def to_pandas(self):
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas is optional
            raise ImportError("InspectTable.to_pandas() needs pandas: pip install pandas (or use .rows)") from err
        return pd.DataFrame(self.rows, columns=self.columns)

    def __repr__(self) -> str:
        return f"InspectTable({len(self.rows)} rows, {len(self.traces)} traces, columns={self.columns})"


def inspect_table(traces: Trace | Sequence[Trace]) -> InspectTable:
    """All traces' tokens as one table: one row per response token.

    Columns: trace, label, model, index, token, token_id, waad, delta, fai, gamma_<strategy> for
    each strategy, preplan, anchor, dominated, intro (bools), intro_of (a dominated anchor's intro
    position or None), anchors_of (the anchors an intro token introduces).
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    rows: list[dict[str, Any]] = []
    for i, tr in enumerate(traces):
        rows.extend(tr.rows(i))
    return InspectTable(rows, traces)


# ---------------------------------------------------------------------------------------------
# Building traces
# ---------------------------------------------------------------------------------------------
def _credit_config(credit_config):
    from rlattn.credit import CreditConfig

    if credit_config is None:
        return CreditConfig()
    if isinstance(credit_config, dict):
        return CreditConfig(**credit_config)
    if not isinstance(credit_config, CreditConfig):
        raise ValueError(f"credit_config must be a CreditConfig or a dict of its fields, got {type(credit_config).__name__}")
    return credit_config


def _intro_links(delta: torch.Tensor, dominated: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """(intro, anchor) for each dominated anchor: argmax of Δ over [t−k, t−1], latest on ties."""
    links = []
    for t in dominated.nonzero().flatten().tolist():
        window = list(range(max(0, t - k), t))
        best = max(window, key=lambda u: (float(delta[u]), u))  # ties -> the latest u
        links.append((best, t))
    return links


def build_trace(
    waad,
    fai,
    *,
    token_ids: Sequence[int],
    tokens: Sequence[str],
    strategies: Sequence[str] = ("coupled",),
    credit_config=None,
    entropies=None,
    recorded_gamma: dict[str, Sequence[float]] | None = None,
    label: str = "trace",
    prompt: str = "",
    meta: dict[str, Any] | None = None,
    stats_config: dict[str, Any] | None = None,
    layers=None,
    head_span=None,
    local_heads=None,
    global_heads=None,
) -> Trace:
    """A :class:`Trace` from per-response-token WAAD and FAI (1-D, length T).

    Flags come from ``select_tokens``; γ of each strategy from ``get_credit_fn``, except strategies
    in ``recorded_gamma``, whose stored γ is kept as is (a rollout record's γ is what training used).
    ``entropies`` (length T) is needed only for ``high_entropy``.
    """
    from rlattn.credit import get_credit_fn, select_tokens, waad_deltas

    cfg = _credit_config(credit_config)
    w = torch.as_tensor(waad, dtype=torch.float32).reshape(1, -1)  # [1, T]
    f = torch.as_tensor([math.nan if v is None else v for v in fai] if not torch.is_tensor(fai) else fai, dtype=torch.float32).reshape(1, -1)  # [1, T]
    T = w.shape[1]
    if f.shape[1] != T or len(token_ids) != T or len(tokens) != T:
        raise ValueError(
            f"build_trace: waad has {T} tokens but fai has {f.shape[1]}, token_ids {len(token_ids)}, "
            f"tokens {len(tokens)}; they must be equal (one value per response token)"
        )
    if not strategies:
        raise ValueError("build_trace: strategies is empty; give at least one credit strategy name")
    mask = torch.ones(1, T, dtype=torch.bool)  # [1, T]
    ent = None if entropies is None else torch.as_tensor(entropies, dtype=torch.float32).reshape(1, -1)  # [1, T]
    sets = select_tokens(w, f, mask, cfg)
    delta = waad_deltas(w, mask)  # [1, T]
    recorded_gamma = recorded_gamma or {}
    gammas: dict[str, list[float]] = {}
    for name in strategies:
        if name in recorded_gamma:
            g = [float(v) for v in recorded_gamma[name]]
            if len(g) != T:
                raise ValueError(f"build_trace: recorded gamma of {name!r} has {len(g)} values, expected {T}")
        else:
            if name == "high_entropy" and ent is None:
                raise ValueError(
                    "strategy 'high_entropy' needs the policy's per-token entropies, which only a model "
                    "trace has (rollout records do not store them); drop it or inspect with --model"
                )
            fn = get_credit_fn(name)
            g = fn(waad=w, fai=f, mask=mask, entropies=ent, config=dataclasses.replace(cfg, strategy=name))[0].tolist()
        gammas[name] = g
    cfg_dict = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "strategy"}

    def grid(x, dtype):
        if x is None:
            return None
        return [[dtype(v) for v in row] for row in torch.as_tensor(x).tolist()]

    return Trace(
        tokens=list(tokens),
        token_ids=[int(i) for i in token_ids],
        waad=w[0].tolist(),
        fai=f[0].tolist(),
        delta=delta[0].tolist(),
        gammas=gammas,
        flags={key: sets[key][0].tolist() for key in FLAG_KEYS},
        links=_intro_links(delta[0], sets["dominated"][0], cfg.k),
        label=label,
        prompt=prompt,
        meta=dict(meta or {}),
        credit_config=cfg_dict,
        stats_config=stats_config,
        layers=None if layers is None else [int(l) for l in layers],
        head_span=grid(head_span, float),
        local_heads=grid(local_heads, bool),
        global_heads=grid(global_heads, bool),
    )


def _token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def _prompt_ids(tokenizer, prompt, chat: bool = True) -> list[int]:
    """Token ids of a prompt: a list of chat messages, or a string (wrapped as a user turn if chat)."""
    if isinstance(prompt, str):
        if chat and getattr(tokenizer, "chat_template", None):
            prompt = [{"role": "user", "content": prompt}]
        else:
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise ValueError(f"prompt must be a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}")
    out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt)


def _stats_config(stats_config):
    from rlattn.credit import AttentionStatsConfig

    if stats_config is None:
        return AttentionStatsConfig()
    if isinstance(stats_config, dict):
        return AttentionStatsConfig(**stats_config)
    return stats_config


@torch.no_grad()
def trace_from_model(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    *,
    strategies: Sequence[str] = ("coupled",),
    credit_config=None,
    stats_config=None,
    label: str = "trace",
    prompt: str = "",
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Attention statistics and γ of ``model`` on prompt ⊕ completion (one unpadded sequence).

    input_ids = prompt ⊕ completion, attention_mask all ones, response_mask on the completion;
    ``compute_attention_stats`` then runs on the model and the credit functions on the response
    slice, exactly as the trainer does for one row of its batch.
    """
    from rlattn.credit import compute_attention_stats

    prompt_ids, completion_ids = [int(i) for i in prompt_ids], [int(i) for i in completion_ids]
    if not completion_ids:
        raise ValueError("trace_from_model: completion_ids is empty; there is no response to inspect")
    scfg = _stats_config(stats_config)
    P, T = len(prompt_ids), len(completion_ids)
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids + completion_ids], device=device)  # [1, N]
    attention_mask = torch.ones_like(input_ids)  # [1, N]
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)  # [1, N]
    response_mask[:, P:] = True
    stats = compute_attention_stats(model, input_ids, attention_mask, response_mask, scfg)
    entropies = None
    if "high_entropy" in strategies:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[0, P - 1 : P + T - 1].float()  # [T, V]
        logp = torch.log_softmax(logits, -1)
        entropies = -(logp.exp() * logp).sum(-1).cpu()  # [T]
    meta = dict(meta or {})
    meta.setdefault("model", getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__)
    meta.setdefault("prompt_tokens", P)
    scfg_dict = dataclasses.asdict(scfg)
    scfg_dict["layers"] = list(stats.layers)
    return build_trace(
        stats.waad[0, P:].cpu(),
        stats.fai[0, P:].cpu(),
        token_ids=completion_ids,
        tokens=_token_texts(tokenizer, completion_ids),
        strategies=strategies,
        credit_config=credit_config,
        entropies=entropies,
        label=label,
        prompt=prompt,
        meta=meta,
        stats_config=scfg_dict,
        layers=stats.layers,
        head_span=stats.head_span[0].cpu(),
        local_heads=stats.local_heads[0].cpu(),
        global_heads=stats.global_heads[0].cpu(),
    )


@torch.no_grad()
def generate_trace(
    model,
    tokenizer,
    prompt,
    *,
    max_new_tokens: int = 160,
    chat: bool = True,
    strategies: Sequence[str] = ("coupled",),
    credit_config=None,
    stats_config=None,
    label: str = "trace",
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Generate a response greedily (stopping at EOS) and inspect it with :func:`trace_from_model`.

    ``prompt`` is a string (a user turn when the tokenizer has a chat template and ``chat``) or a
    list of chat messages, like the ``prompt`` column of ``rlattn.data.load_dataset``.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: a positive int")
    ids = _prompt_ids(tokenizer, prompt, chat)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)  # [1, P]
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    completion = out[0, len(ids) :].tolist()
    stops = set(eos if isinstance(eos, list) else [eos]) - {None}
    for j, tok in enumerate(completion):
        if tok in stops:  # keep the EOS (it receives loss in training), drop what follows
            completion = completion[: j + 1]
            break
    meta = dict(meta or {})
    meta.setdefault("generation", f"greedy, max_new_tokens={max_new_tokens}")
    return trace_from_model(
        model, tokenizer, ids, completion,
        strategies=strategies, credit_config=credit_config, stats_config=stats_config,
        label=label, prompt=_prompt_text(prompt), meta=meta,
    )


def load_model(name_or_path: str, *, dtype: str = "float32"):
    """``(model, tokenizer, resolved_path)`` for a path, hub id or ``embedded:<name>`` (eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlattn.models import resolve_model

    path = resolve_model(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer, path


# --- rollout records -------------------------------------------------------------------------
def _byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable bytes stand for themselves, the others
    (controls, space, a few Latin-1 ones) were shifted to code points 256, 257, ... in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shift = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + shift)] = b
            shift += 1
    return out


_BYTE_DECODER = _byte_decoder()


def _record_token_texts(tokens: Sequence[str]) -> list[str]:
    """Display text of stored token strings (``convert_ids_to_tokens`` output, e.g. 'Ġthe', 'Ċ')."""
    if all(all(ch in _BYTE_DECODER for ch in t) for t in tokens if not (t.startswith("<|") and t.endswith("|>"))):
        return [
            t if (t.startswith("<|") and t.endswith("|>")) else bytes(_BYTE_DECODER[ch] for ch in t).decode("utf-8", errors="replace")
            for t in tokens
        ]
    return [t.replace("\u2581", " ") for t in tokens]  # SentencePiece marks a space with ▁


def trace_from_record(
    record: dict[str, Any],
    *,
    strategies: Sequence[str] | None = None,
    credit_config=None,
    label: str | None = None,
    model: str | None = None,
) -> Trace:
    """A :class:`Trace` from one rollout record (``rlattn.rollouts.load_records``); no model needed.

    The record's own γ is shown for its strategy; any other strategy in ``strategies`` is
    recomputed from the stored WAAD and FAI. Flags are recomputed with ``credit_config``; if they
    disagree with the stored preplan/anchor flags (the run used other settings), ``meta['note']``
    says so. Head spans are not stored in records, so there is no head-span plot.
    """
    for key in ("waad", "fai", "completion_ids"):
        if record.get(key) is None:
            raise ValueError(f"rollout record has no {key!r}; it needs waad, fai and completion_ids (written by the trainer with credit_log_samples > 0)")
    recorded = record.get("strategy")
    strategies = list(strategies) if strategies else [recorded or "coupled"]
    rec_gamma = {recorded: record["gamma"]} if recorded and record.get("gamma") is not None else {}
    ids = record["completion_ids"]
    tokens = record.get("tokens")
    texts = _record_token_texts(tokens) if tokens else [str(i) for i in ids]
    meta = {"model": model or record.get("model") or "(from rollout records)", "source": "rollout record"}
    for key in ("step", "advantage"):
        if record.get(key) is not None:
            meta[key] = record[key]
    if record.get("rewards"):
        meta["rewards"] = record["rewards"]
    if recorded:
        meta["recorded_strategy"] = recorded
    prompt = record.get("prompt") or ""
    if isinstance(prompt, str) and prompt.startswith("["):
        try:
            prompt = _prompt_text(json.loads(prompt))
        except (json.JSONDecodeError, AttributeError, TypeError):
            pass
    trace = build_trace(
        record["waad"], record["fai"], token_ids=ids, tokens=texts, strategies=strategies,
        credit_config=credit_config, recorded_gamma={k: v for k, v in rec_gamma.items() if k in strategies},
        label=label or f"record (step {record.get('step', '?')})", prompt=_prompt_text(prompt), meta=meta,
    )
    diff = [k for k in ("preplan", "anchor") if record.get(k) is not None and list(map(bool, record[k])) != trace.flags[k]]
    if diff:
        trace.meta["note"] = (
            f"the recorded {' and '.join(diff)} flags differ from those recomputed with this credit config; "
            "pass the run's credit settings to match"
        )
    return trace


def load_record_traces(path, indices: Iterable[int] | None = None, **kwargs) -> list[Trace]:
    """Traces of the records at ``indices`` (default: the first) of a rollouts.jsonl/.parquet file."""
    from rlattn.rollouts.records import load_records

    records = load_records(path)
    if not records:
        raise ValueError(f"{path} holds no rollout records")
    indices = list(indices) if indices is not None else [0]
    out = []
    for i in indices:
        if not -len(records) <= i < len(records):
            raise ValueError(f"record index {i} is out of range: {path} holds {len(records)} records (0..{len(records) - 1})")
        out.append(trace_from_record(records[i], label=f"record {i}", **kwargs))
    return out


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_signals(trace: Trace, path) -> Path:
    """Two stacked line plots over response position: WAAD with preplan (▲) and intro (◆) tokens,
    FAI with anchors (●; hollow when dominated). Writes a PNG and returns its path."""
    plt = _pyplot()
    T = len(trace)
    x = list(range(T))
    width = min(24.0, max(8.0, T / 25))
    fig, (ax_w, ax_f) = plt.subplots(2, 1, figsize=(width, 5.2), sharex=True, constrained_layout=True)
    lw = 1.2 if T < 1000 else 0.6
    ax_w.plot(x, trace.waad, color="#1d4ed8", lw=lw, label="WAAD")
    ax_f.plot(x, trace.fai, color="#c2410c", lw=lw, label="FAI")
    fl = trace.flags
    pre = [t for t in x if fl["preplan"][t]]
    intro = [t for t in x if fl["intro"][t]]
    anc = [t for t in x if fl["anchor"][t] and not fl["dominated"][t]]
    dom = [t for t in x if fl["dominated"][t]]
    ms = 28 if T < 1000 else 8
    ax_w.scatter(pre, [trace.waad[t] for t in pre], marker="^", s=ms, color="#2563eb", zorder=3, label="preplan (Δ top-q)")
    ax_w.scatter(intro, [trace.waad[t] for t in intro], marker="D", s=ms, color="#9333ea", zorder=4, label="intro of dominated anchor")
    ax_f.scatter(anc, [trace.fai[t] for t in anc], marker="o", s=ms, color="#dc2626", zorder=3, label="anchor (FAI top-q)")
    ax_f.scatter(dom, [trace.fai[t] for t in dom], marker="o", s=ms, facecolors="none", edgecolors="#dc2626", zorder=3, label="dominated anchor")
    ax_w.set_ylabel("WAAD")
    ax_f.set_ylabel("FAI")
    ax_f.set_xlabel("response position")
    ax_w.set_title(f"{trace.label}: WAAD and FAI along the response ({T} tokens)", fontsize=11)
    for ax in (ax_w, ax_f):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
        ax.set_xlim(-0.5, T - 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_head_spans(trace: Trace, path) -> Path:
    """Heatmap of head span (layers × heads), local heads outlined blue, global heads red."""
    if trace.head_span is None:
        raise ValueError(f"trace {trace.label!r} has no head spans (rollout records do not store them); inspect with --model")
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    span = trace.head_span
    nL, H = len(span), len(span[0])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * H + 2.5), max(2.6, 0.5 * nL + 1.6)), constrained_layout=True)
    im = ax.imshow(span, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="span (mean look-back distance, tokens)")
    for li in range(nL):
        for h in range(H):
            for heads, colour in ((trace.local_heads, "#60a5fa"), (trace.global_heads, "#f87171")):
                if heads is not None and heads[li][h]:
                    ax.add_patch(Rectangle((h - 0.5, li - 0.5), 1, 1, fill=False, edgecolor=colour, lw=2.5))
            if H <= 32 and nL <= 16:
                v = span[li][h]
                ax.text(h, li, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(H))
    ax.set_yticks(range(nL))
    ax.set_yticklabels([str(l) for l in (trace.layers or range(nL))])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{trace.label}: head span — local heads (blue), global heads (red)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
def _num(x: float | None):
    """4 significant digits; None for NaN/inf (JSON has no NaN); ints stay ints."""
    if x is None or not math.isfinite(x):
        return None
    r = float(f"{x:.4g}")
    return int(r) if r.is_integer() and abs(r) < 1e15 else r


def _trace_payload(tr: Trace) -> dict[str, Any]:
    return {
        "label": tr.label,
        "tokens": tr.tokens,
        "ids": tr.token_ids,
        "waad": [_num(v) for v in tr.waad],
        "delta": [_num(v) for v in tr.delta],
        "fai": [_num(v) for v in tr.fai],
        "gammas": {k: [_num(v) for v in g] for k, g in tr.gammas.items()},
        "flags": {k: [i for i, f in enumerate(tr.flags[k]) if f] for k in FLAG_KEYS},
        "links": [list(l) for l in tr.links],
    }


def _json_for_script(obj: Any) -> str:
    # '<' only occurs inside JSON strings; escaping it keeps "</script>" and "<!--" inert.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _fmt_config(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    return " · ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def render_html(
    traces: Trace | Sequence[Trace],
    *,
    strategies: Sequence[str] | None = None,
    signal: str = "gamma",
    title: str = "rlattn inspector",
    images: dict[str, Any] | None = None,
) -> str:
    """One self-contained HTML page (inline CSS/JS, no network) for the traces.

    One panel per (trace, strategy), side by side. ``strategies`` defaults to each trace's own;
    ``signal`` is the initial colouring (one of ``SIGNALS``; the page has a selector). ``images``
    maps a caption to PNG bytes or a PNG path, embedded as data URIs under the panels.
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces:
        raise ValueError("render_html: no traces given")
    if signal not in SIGNALS:
        raise ValueError(f"signal={signal!r} is invalid; allowed: {', '.join(SIGNALS)}")
    panels = []
    for ti, tr in enumerate(traces):
        names = list(strategies) if strategies else tr.strategies
        for s in names:
            if s not in tr.gammas:
                raise ValueError(f"strategy {s!r} is not computed for trace {tr.label!r}; it has: {', '.join(tr.gammas)}")
            panels.append({"trace": ti, "strategy": s})
    data = {"signal": signal, "batch": _RENDER_BATCH, "traces": [_trace_payload(t) for t in traces], "panels": panels}

    esc = html.escape
    all_strats = list(dict.fromkeys(p["strategy"] for p in panels))
    models = list(dict.fromkeys(str(t.meta.get("model", "?")) for t in traces))
    head = [
        f"<h1>{esc(title)}</h1>",
        '<table class="meta">',
        f"<tr><th>model</th><td>{esc(', '.join(models))}</td></tr>",
        f"<tr><th>strategy</th><td>{esc(', '.join(all_strats))}</td></tr>",
        f"<tr><th>credit config</th><td>{esc(_fmt_config(traces[0].credit_config))}</td></tr>",
    ]
    if traces[0].stats_config:
        sc = {k: v for k, v in traces[0].stats_config.items() if k not in ("fixed_local_heads", "fixed_global_heads", "chunk_size", "memory_budget_mb")}
        head.append(f"<tr><th>attention stats</th><td>{esc(_fmt_config(sc))}</td></tr>")
    head.append("</table>")
    for ti, tr in enumerate(traces):
        extra = {k: v for k, v in tr.meta.items() if k != "model"}
        summary = f"{esc(tr.label)} — {len(tr)} response tokens" + (f" · {esc(_fmt_config(extra))}" if extra else "")
        head.append(f'<details class="prompt"><summary>{summary}</summary><pre>{esc(tr.prompt)}</pre></details>')
    imgs = []
    for caption, img in (images or {}).items():
        raw = img if isinstance(img, (bytes, bytearray)) else Path(img).read_bytes()
        b64 = base64.b64encode(raw).decode("ascii")
        imgs.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}"><figcaption>{esc(caption)}</figcaption></figure>')
    options = "".join(
        f'<option value="{s}"{" selected" if s == signal else ""}>{lbl}</option>'
        for s, lbl in zip(SIGNALS, ("γ (credit weight)", "WAAD", "Δ WAAD (preplan score)", "FAI (anchor score)"))
    )
    cols = min(len(panels), 3)
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}
#panels {{ grid-template-columns: repeat({cols}, minmax(0, 1fr)); }}
</style>
</head>
<body>
<header>
{chr(10).join(head)}
<div class="controls">
<label>colour by <select id="signal">{options}</select></label>
<label><input type="checkbox" id="marks" checked> marks</label>
<label><input type="checkbox" id="links" checked> intro→anchor links</label>
<span id="legend" class="legend"></span>
<span class="keys"><span class="tok pp">preplan</span> <span class="tok an">anchor</span> <span class="tok an dm">dominated anchor</span> <span class="tok in">intro</span></span>
</div>
</header>
<main id="panels"></main>
{'<details class="plots" open><summary>plots</summary>' + ''.join(imgs) + '</details>' if imgs else ''}
<div id="tip" class="tip" hidden></div>
<script id="rlattn-data" type="application/json">{_json_for_script(data)}</script>
<script>{_JS}</script>
</body>
</html>
"""
    return body


def write_html(path, traces, **kwargs) -> Path:
    """:func:`render_html` into ``path`` (UTF-8). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(traces, **kwargs), encoding="utf-8")
    return path


def write_report(
    traces: Sequence[Trace],
    out_dir,
    *,
    strategies: Sequence[str] | None = None,
    signal: str = "gamma",
    plots: bool = True,
    embed_plots: bool = True,
    title: str = "rlattn inspector",
) -> dict[str, Any]:
    """Write ``inspector.html`` and, with ``plots``, ``<i>_signals.png`` / ``<i>_heads.png`` per trace
    (i = trace number; no head plot for record traces) into ``out_dir``. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    if plots:
        for i, tr in enumerate(traces):
            pngs[f"{tr.label}: WAAD / FAI"] = plot_signals(tr, out / f"trace{i}_signals.png")
            if tr.head_span is not None:
                pngs[f"{tr.label}: head spans"] = plot_head_spans(tr, out / f"trace{i}_heads.png")
    page = write_html(out / "inspector.html", traces, strategies=strategies, signal=signal, title=title,
                      images=pngs if embed_plots else None)
    return {"html": page, "pngs": list(pngs.values())}


_CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #f6f8fa; }
header { padding: 10px 16px 6px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0 0 6px; }
table.meta { border-collapse: collapse; font-size: 12.5px; margin-bottom: 4px; }
table.meta th { text-align: left; color: var(--muted); font-weight: 600; padding: 1px 12px 1px 0; vertical-align: top; white-space: nowrap; }
table.meta td { padding: 1px 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
details.prompt { font-size: 12.5px; margin: 2px 0; }
details.prompt pre { white-space: pre-wrap; background: #f6f8fa; padding: 6px; margin: 4px 0; max-height: 12em; overflow: auto; }
.controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin-top: 6px; font-size: 13px; }
.legend { display: inline-flex; align-items: center; gap: 6px; }
.legend .bar { display: inline-block; width: 140px; height: 12px; border: 1px solid var(--line); }
.keys .tok { font-family: system-ui, sans-serif; font-size: 12px; padding: 0 3px; }
#panels { display: grid; gap: 12px; padding: 12px 16px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 6px; min-width: 0; }
.panel h2 { font-size: 13.5px; margin: 0; padding: 6px 10px; border-bottom: 1px solid var(--line); display: flex; justify-content: space-between; gap: 8px; }
.panel h2 .sub { color: var(--muted); font-weight: 400; }
.toks { position: relative; padding: 12px 10px 10px; font: 13px/2.05 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word; max-height: 75vh; overflow-y: auto; }
.tok { border-radius: 2px; padding: 1px 0; cursor: default; }
.tok.pp { border-bottom: 3px solid #2563eb; }
.tok.in { box-shadow: inset 0 3px 0 #9333ea; }
.tok.an { outline: 2px solid #dc2626; outline-offset: -1px; }
.tok.an.dm { outline-style: dashed; }
.nomarks .tok.pp { border-bottom: none; }
.nomarks .tok.in { box-shadow: none; }
.nomarks .tok.an { outline: none; }
.tok.hl { outline: 2px solid #111 !important; }
.link { position: absolute; border: 2px solid #9333ea; border-bottom: none; border-radius: 7px 7px 0 0; pointer-events: none; opacity: .85; }
.link::after { content: ""; position: absolute; right: -5px; bottom: -5px; border: 4px solid transparent; border-top: 6px solid #9333ea; }
.link.cut { border-style: dashed; }
.nolinks .link { display: none; }
.tip { position: fixed; z-index: 10; background: #1f2328; color: #fff; font: 12px/1.4 ui-monospace, Menlo, monospace; padding: 6px 8px; border-radius: 5px; pointer-events: none; max-width: 360px; white-space: pre; box-shadow: 0 2px 8px rgba(0,0,0,.25); }
details.plots { padding: 0 16px 16px; }
details.plots img { max-width: 100%; background: #fff; border: 1px solid var(--line); }
figure { margin: 8px 0; }
figcaption { color: var(--muted); font-size: 12px; }
"""

# The page script. Tokens are created in batches of data.batch per task, yielding to the browser in
# between (so an 8K-token trace never blocks the page); recolouring on a signal change is batched the same way. When every
# panel is built, <body data-rendered="done"> (the browser test waits for it).
_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("rlattn-data").textContent);
  const root = document.getElementById("panels");
  const tip = document.getElementById("tip");
  const sel = document.getElementById("signal");
  const COLOURS = { gamma: [22, 163, 74], waad: [37, 99, 235], delta: [147, 51, 234], fai: [234, 88, 12] };
  const NAMES = { gamma: "γ", waad: "WAAD", delta: "Δ WAAD", fai: "FAI" };
  // yield to the browser between batches (a macrotask, so input and paint run in between; unlike
  // requestAnimationFrame it also runs in background tabs and under headless virtual time)
  const nextFrame = (f) => setTimeout(f, 0);
  let signal = data.signal;
  const panels = [];

  function q99(values) {
    const v = values.filter((x) => x !== null && isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return [0, 1];
    return [v[0], v[Math.min(v.length - 1, Math.floor(0.99 * (v.length - 1)))]];
  }
  function scale(p, sig) {
    const tr = data.traces[p.trace];
    if (sig === "gamma") {
      const g = tr.gammas[p.strategy];
      const r = q99(g);
      return { values: g, lo: Math.min(1, r[0]), hi: Math.max(r[1], 1.75) };
    }
    const r = q99(tr[sig]);
    return { values: tr[sig], lo: Math.min(0, r[0]), hi: r[1] > r[0] ? r[1] : r[0] + 1 };
  }
  function colour(v, s, sig) {
    if (v === null || !isFinite(v)) return "transparent";
    const base = sig === "gamma" ? 1 : s.lo;
    let a = (v - base) / (s.hi - base || 1);
    let c = COLOURS[sig];
    if (sig === "gamma" && v < 1) { c = [220, 38, 38]; a = (1 - v) / (1 - s.lo || 1); }
    a = Math.max(0, Math.min(1, a)) * 0.8;
    return a < 0.02 ? "transparent" : "rgba(" + c[0] + "," + c[1] + "," + c[2] + "," + a.toFixed(3) + ")";
  }
  function fmt(v) { return v === null || v === undefined ? "undefined" : (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4)); }
  // a run of newlines shows one ↵ per newline and breaks the line once
  function shown(t) { return t === "" ? "∅" : t.replace(/\n+/g, (m) => "↵".repeat(m.length) + "\n"); }

  function legend() {
    const el = document.getElementById("legend");
    const s = panels.length ? scale(panels[0].p, signal) : { lo: 0, hi: 1 };
    const lo = signal === "gamma" ? 1 : s.lo;
    const c = COLOURS[signal];
    el.innerHTML = "";
    const a = document.createElement("span"); a.textContent = NAMES[signal] + " " + fmt(lo);
    const bar = document.createElement("span"); bar.className = "bar";
    bar.style.background = "linear-gradient(90deg, rgba(" + c + ",0), rgba(" + c + ",0.8))";
    const b = document.createElement("span"); b.textContent = fmt(s.hi) + (signal === "fai" ? " (blank: horizon empty)" : "");
    el.append(a, bar, b);
  }

  function makePanel(p, idx) {
    const tr = data.traces[p.trace];
    const el = document.createElement("section"); el.className = "panel";
    const h = document.createElement("h2");
    const t = document.createElement("span"); t.textContent = tr.label + " · " + p.strategy;
    const sub = document.createElement("span"); sub.className = "sub";
    const g = tr.gammas[p.strategy], n = g.length;
    const amp = g.filter((x) => x > 1).length;
    const mean = g.reduce((u, x) => u + x, 0) / Math.max(1, n);
    sub.textContent = n + " tokens · preplan " + tr.flags.preplan.length + " · anchor " + tr.flags.anchor.length +
      " · dominated " + tr.flags.dominated.length + " · γ>1 on " + amp + " · mean γ " + mean.toFixed(3);
    h.append(t, sub);
    const box = document.createElement("div"); box.className = "toks"; box.dataset.panel = idx;
    el.append(h, box);
    root.append(el);
    const cls = new Array(n).fill("");
    const add = (key, c) => tr.flags[key].forEach((i) => { cls[i] += " " + c; });
    add("preplan", "pp"); add("anchor", "an"); add("dominated", "dm"); add("intro", "in");
    return { p: p, tr: tr, box: box, cls: cls, spans: new Array(n), built: 0 };
  }

  function buildSome(P) {
    const s = scale(P.p, signal);
    const frag = document.createDocumentFragment();
    const end = Math.min(P.tr.tokens.length, P.built + data.batch);
    for (let i = P.built; i < end; i++) {
      const sp = document.createElement("span");
      sp.className = "tok" + P.cls[i];
      sp.dataset.i = i;
      sp.textContent = shown(P.tr.tokens[i]);
      sp.style.background = colour(s.values[i], s, signal);
      P.spans[i] = sp;
      frag.append(sp);
    }
    P.box.append(frag);
    P.built = end;
    return end >= P.tr.tokens.length;
  }

  function drawLinks(P) {
    P.box.querySelectorAll(".link").forEach((e) => e.remove());
    if (P.p.strategy !== "coupled") return;  // the links are the coupled strategy's credit moves
    const base = P.box.getBoundingClientRect();
    const frag = document.createDocumentFragment();
    const dx = P.box.scrollLeft - base.left, dy = P.box.scrollTop - base.top;
    for (const [u, t] of P.tr.links) {
      const a = P.spans[u], b = P.spans[t];
      if (!a || !b) continue;
      const ra = a.getClientRects(), rb = b.getClientRects();
      if (!ra.length || !rb.length) continue;
      const A = ra[ra.length - 1], B = rb[0];
      const x1 = A.left + A.width / 2 + dx, x2 = B.left + B.width / 2 + dx;
      const mk = (left, top, width, cut) => {
        const d = document.createElement("div"); d.className = "link" + (cut ? " cut" : "");
        d.style.left = left + "px"; d.style.top = top + "px"; d.style.width = Math.max(6, width) + "px"; d.style.height = "7px";
        d.title = "intro " + u + " → anchor " + t;
        frag.append(d);
      };
      if (Math.abs(A.top - B.top) < 3 && x2 > x1) mk(x1, A.top + dy - 8, x2 - x1, false);
      else { mk(x1, A.top + dy - 8, 14, true); mk(x2 - 14, B.top + dy - 8, 14, true); }
    }
    P.box.append(frag);
  }

  function build() {
    data.panels.forEach((p, i) => panels.push(makePanel(p, i)));
    legend();
    let k = 0;
    const step = () => {
      if (k < panels.length && buildSome(panels[k])) { drawLinks(panels[k]); k++; }
      if (k < panels.length) nextFrame(step);
      else document.body.dataset.rendered = "done";
    };
    nextFrame(step);
  }

  function recolour() {
    legend();
    let k = 0, i = 0;
    const step = () => {
      let budget = data.batch * 4;
      while (k < panels.length && budget > 0) {
        const P = panels[k], s = scale(P.p, signal);
        const end = Math.min(P.built, i + budget);
        budget -= end - i;
        for (; i < end; i++) P.spans[i].style.background = colour(s.values[i], s, signal);
        if (i >= P.built) { k++; i = 0; }
      }
      if (k < panels.length) nextFrame(step);
    };
    nextFrame(step);
  }

  function onOver(ev) {
    const sp = ev.target.closest ? ev.target.closest(".tok[data-i]") : null;
    if (!sp) { tip.hidden = true; return; }
    const box = sp.parentElement, P = panels[+box.dataset.panel], tr = P.tr, i = +sp.dataset.i;
    const has = (key) => tr.flags[key].indexOf(i) >= 0;
    const lines = ["#" + i + "  " + JSON.stringify(tr.tokens[i]) + "  id " + tr.ids[i],
      "WAAD   " + fmt(tr.waad[i]), "Δ WAAD " + fmt(tr.delta[i]),
      "FAI    " + (tr.fai[i] === null ? "undefined (horizon empty)" : fmt(tr.fai[i]))];
    for (const s in tr.gammas) lines.push((s === P.p.strategy ? "▶ " : "  ") + "γ " + s + " = " + fmt(tr.gammas[s][i]));
    const f = ["preplan", "anchor", "dominated", "intro"].filter(has);
    lines.push("marks: " + (f.length ? f.join(", ") : "none"));
    for (const [u, t] of tr.links) {
      if (t === i) lines.push("introduced by #" + u + " " + JSON.stringify(tr.tokens[u]));
      if (u === i) lines.push("introduces anchor #" + t + " " + JSON.stringify(tr.tokens[t]));
    }
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = ev.clientY + 18 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 18;
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }

  sel.addEventListener("change", () => { signal = sel.value; recolour(); });
  document.getElementById("marks").addEventListener("change", (e) => root.classList.toggle("nomarks", !e.target.checked));
  document.getElementById("links").addEventListener("change", (e) => root.classList.toggle("nolinks", !e.target.checked));
  root.addEventListener("mouseover", onOver);
  root.addEventListener("mouseleave", () => { tip.hidden = true; });
  let timer = null;
  window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(() => panels.forEach(drawLinks), 150); });
  build();
})();
"""
