"""Traces: one response with its per-token WAAD, Δ, FAI, selections and γ, and where they come from.

A :class:`Trace` holds, per response token, the text, id, WAAD, Δ (= |WAAD[t] − WAAD[t+1]|),
FAI, γ of every requested strategy and the selected sets (preplan, anchor, dominated, intro) plus
the intro→anchor links of the coupled strategy; per trace, the model, the configs and head spans.
:func:`inspect_table` turns traces into rows (one per response token) for notebooks.

Traces come from per-token signals (:func:`build_trace`), from a model on given ids
(:func:`trace_from_model`: ``compute_attention_stats`` on prompt ⊕ completion) or from a greedy
generation (:func:`generate_trace`); rollout records are in :mod:`.records`. Flags are always
computed with ``select_tokens`` and γ with ``get_credit_fn``, the very functions the trainer uses,
so what the page marks is what training amplifies (for the same configs). What a strategy needs
(entropies: one more forward) is asked of the registry (``strategy_needs``), never read off its name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .text import encode_prompt, prompt_text, token_texts

SIGNALS = ("gamma", "waad", "delta", "fai")
FLAG_KEYS = ("preplan", "anchor", "dominated", "intro")


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
    ``entropies`` (length T) is needed only by strategies that declare it (``strategy_needs``).
    """
    from rlattn.credit import get_credit_fn, select_tokens, strategy_needs, waad_deltas

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
            if ent is None and "entropies" in strategy_needs(name):
                raise ValueError(
                    f"strategy {name!r} needs the policy's per-token entropies, which only a model "
                    "trace has (rollout records do not store them); drop it, or inspect a model trace (--prompt or --dataset)"
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
    **model_inputs,
) -> Trace:
    """Attention statistics and γ of ``model`` on prompt ⊕ completion (one unpadded sequence).

    input_ids = prompt ⊕ completion, attention_mask all ones, response_mask on the completion;
    ``compute_attention_stats`` then runs on the model and the credit functions on the response
    slice, exactly as the trainer does for one row of its batch. ``model_inputs`` (e.g.
    ``pixel_values``, ``image_sizes``, ``image_grid_thw``, ``token_type_ids``) go to every forward:
    the statistics pass and, when a strategy needs entropies, the entropy pass.
    """
    from rlattn.credit import compute_attention_stats, strategy_needs

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
    stats = compute_attention_stats(model, input_ids, attention_mask, response_mask, scfg, **model_inputs)
    entropies = None
    if any("entropies" in strategy_needs(s) for s in strategies):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **model_inputs).logits[0, P - 1 : P + T - 1].float()  # [T, V]
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
        tokens=token_texts(tokenizer, completion_ids),
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
    **model_inputs,
) -> Trace:
    """Generate a response greedily (stopping at EOS) and inspect it with :func:`trace_from_model`.

    ``prompt`` is a string (a user turn when the tokenizer has a chat template and ``chat``) or a
    list of chat messages, like the ``prompt`` column of ``rlattn.data.load_dataset``.
    ``model_inputs`` go to ``generate`` and to :func:`trace_from_model`.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: a positive int")
    ids = encode_prompt(tokenizer, prompt, chat)
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
        **model_inputs,
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
        label=label, prompt=prompt_text(prompt), meta=meta, **model_inputs,
    )


def load_model(name_or_path: str, *, dtype: str = "float32"):
    """``(model, tokenizer, resolved_path)`` for any model spec of ``rlattn.models.load_model_and_tokenizer``
    (a path, hub id, adapter dir, ``embedded:<name>`` or ``tiny:<arch>``), in eval mode."""
    from rlattn.models import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(name_or_path, dtype=dtype, attn_implementation="sdpa", eval_mode=True)
    return loaded.model, loaded.tokenizer, loaded.path
