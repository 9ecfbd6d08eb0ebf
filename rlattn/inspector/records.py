"""Traces from rollout records, the per-token credit the trainer wrote (``credit_log_samples > 0``).

A record (``rlattn.rollouts.load_records``) holds the completion's ids and tokens, the WAAD, FAI and
γ that training used, the preplan/anchor flags and the rewards, so no model weights are needed: the
recorded γ is shown for the recorded strategy, other strategies are recomputed from the stored WAAD
and FAI, and the flags are recomputed with the given credit config and compared with the stored
ones. The text is decoded from ``completion_ids`` by the tokenizer of the run's model (``model``,
default the embedded one; only its tokenizer is loaded). The record's ``tokens`` must be what that
tokenizer makes of the ids, so a wrong model fails, naming the fix, instead of showing wrong text.
Records hold no head spans and no entropies.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from rlattn.models import DEFAULT_MODEL

from .text import prompt_text, token_texts
from .trace import Trace, build_trace


def _load_tokenizer(model: str):
    from rlattn.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(model))


def _check_tokens(record: dict[str, Any], tokenizer, model: str) -> None:
    stored = record.get("tokens")
    if stored is None:
        return
    made = tokenizer.convert_ids_to_tokens([int(i) for i in record["completion_ids"]])
    if list(stored) != list(made):
        t = next((i for i, (a, b) in enumerate(zip(stored, made)) if a != b), min(len(stored), len(made)))
        raise ValueError(
            f"the rollout record's tokens are not what the tokenizer of {model!r} makes of its completion_ids "
            f"(first difference at token {t}: recorded {stored[t:t + 1]}, tokenizer {made[t:t + 1]}); "
            "pass the run's model with --model"
        )


def trace_from_record(
    record: dict[str, Any],
    *,
    strategies: Sequence[str] | None = None,
    credit_config=None,
    label: str | None = None,
    model: str = DEFAULT_MODEL,
    tokenizer=None,
) -> Trace:
    """A :class:`Trace` from one rollout record (``rlattn.rollouts.load_records``).

    The record's own γ is shown for its strategy; any other strategy in ``strategies`` is
    recomputed from the stored WAAD and FAI. Flags are recomputed with ``credit_config``; if they
    disagree with the stored preplan/anchor flags (the run used other settings), ``meta['note']``
    says so. ``tokenizer`` (default: the tokenizer of ``model``, the run's model) decodes the ids.
    """
    for key in ("waad", "fai", "completion_ids"):
        if record.get(key) is None:
            raise ValueError(f"rollout record has no {key!r}; it needs waad, fai and completion_ids (written by the trainer with credit_log_samples > 0)")
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model)
    _check_tokens(record, tokenizer, model)
    recorded = record.get("strategy")
    strategies = list(strategies) if strategies else [recorded or "coupled"]
    rec_gamma = {recorded: record["gamma"]} if recorded and record.get("gamma") is not None else {}
    ids = record["completion_ids"]
    meta = {"model": model, "source": "rollout record"}
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
            prompt = prompt_text(json.loads(prompt))
        except (json.JSONDecodeError, AttributeError, TypeError):
            pass
    trace = build_trace(
        record["waad"], record["fai"], token_ids=ids, tokens=token_texts(tokenizer, ids), strategies=strategies,
        credit_config=credit_config, recorded_gamma={k: v for k, v in rec_gamma.items() if k in strategies},
        label=label or f"record (step {record.get('step', '?')})", prompt=prompt_text(prompt), meta=meta,
    )
    diff = [k for k in ("preplan", "anchor") if record.get(k) is not None and list(map(bool, record[k])) != trace.flags[k]]
    if diff:
        trace.meta["note"] = (
            f"the recorded {' and '.join(diff)} flags differ from those recomputed with this credit config; "
            "pass the run's credit settings to match"
        )
    return trace


def load_record_traces(path, indices: Iterable[int] | None = None, *, model: str = DEFAULT_MODEL, tokenizer=None,
                       **kwargs) -> list[Trace]:
    """Traces of the records at ``indices`` (default: the first) of a rollouts.jsonl/.parquet file,
    decoded by the tokenizer of ``model`` (loaded once); ``kwargs`` go to :func:`trace_from_record`."""
    from rlattn.rollouts.records import load_records

    records = load_records(path)
    if not records:
        raise ValueError(f"{path} holds no rollout records")
    indices = list(indices) if indices is not None else [0]
    for i in indices:
        if not -len(records) <= i < len(records):
            raise ValueError(f"record index {i} is out of range: {path} holds {len(records)} records (0..{len(records) - 1})")
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model)
    return [trace_from_record(records[i], label=f"record {i}", model=model, tokenizer=tokenizer, **kwargs) for i in indices]
